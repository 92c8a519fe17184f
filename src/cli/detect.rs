//! `vlm-perception detect`.

use anyhow::{Context, Result};
use vlm_perception::{
    pipeline::{DetectParams, Detector, LoadOptions},
    vision::{draw, image_io},
};

use crate::args::DetectArgs;

pub fn run(args: &DetectArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.threshold) {
        anyhow::bail!("--threshold must be in [0, 1], got {}", args.threshold);
    }
    if args.nms_iou.is_nan() || args.nms_iou <= 0.0 {
        anyhow::bail!("--nms-iou must be positive, got {}", args.nms_iou);
    }
    if !(0.0..=1.0).contains(&args.min_objectness) {
        anyhow::bail!(
            "--min-objectness must be in [0, 1], got {}",
            args.min_objectness
        );
    }
    let options = LoadOptions::parse(&args.model.device, &args.model.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    let detector = Detector::load(&args.model.model, &options)
        .with_context(|| format!("cannot load detection model `{}`", args.model.model))?;
    if args.min_objectness > 0.0 && !detector.has_objectness() {
        anyhow::bail!(
            "--min-objectness needs an OWLv2 checkpoint: `{}` is {}, which has no objectness head",
            args.model.model,
            detector.family().name()
        );
    }
    let queries = detector.encode_queries(&args.queries)?;
    let params = DetectParams {
        threshold: args.threshold,
        nms_iou: args.nms_iou,
    };
    let result =
        detector.detect_with_min_objectness(&image, &queries, &params, args.min_objectness)?;

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{} detection(s) in {}x{} ({:.1} ms)",
            result.detections.len(),
            result.width,
            result.height,
            result.timings.total().as_secs_f64() * 1e3
        );
        // OWLv2 detections get an objectness column.
        let objectness = detector.has_objectness();
        if !result.detections.is_empty() {
            println!(
                "{:>5}  {:<32} {:>6}  {:>8} {:>8} {:>8} {:>8}{}",
                "query",
                "label",
                "score",
                "x_min",
                "y_min",
                "x_max",
                "y_max",
                if objectness { "  objectness" } else { "" }
            );
        }
        for d in &result.detections {
            let [x0, y0, x1, y1] = d.bbox.to_array();
            let o = d
                .objectness
                .map_or(String::new(), |o| format!("  {o:>10.3}"));
            println!(
                "{:>5}  {:<32} {:>6.3}  {x0:>8.1} {y0:>8.1} {x1:>8.1} {y1:>8.1}{o}",
                d.query_index,
                truncate(&d.label, 32),
                d.score
            );
        }
    }

    if let Some(path) = &args.overlay {
        let mut canvas = image;
        // Lowest score first so the best boxes end on top.
        for d in result.detections.iter().rev() {
            let label = format!("{} {:.2}", d.label, d.score);
            draw::draw_labelled_box(
                &mut canvas,
                &d.bbox,
                &label,
                draw::palette_color(d.query_index),
            );
        }
        canvas
            .save(path)
            .with_context(|| format!("cannot write overlay `{}`", path.display()))?;
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
