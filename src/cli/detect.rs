//! `vlm-perception detect`.

use anyhow::{Context, Result};
use vlm_perception::{
    pipeline::{
        detect::{DEFAULT_IMAGE_GUIDED_NMS_IOU, DEFAULT_IMAGE_GUIDED_THRESHOLD, DEFAULT_THRESHOLD},
        DetectParams, Detector, LoadOptions, QueryKind,
    },
    vision::{draw, image_io},
};

use crate::args::{file_label, DetectArgs};

/// `--nms-iou`'s default with text queries: no NMS, as transformers' `post_process_object_detection`.
const DEFAULT_TEXT_NMS_IOU: f32 = 1.0;

pub fn run(args: &DetectArgs) -> Result<()> {
    // clap guarantees exactly one kind of query.
    let image_guided = !args.query_images.is_empty();
    let params = DetectParams {
        threshold: args.threshold.unwrap_or(if image_guided {
            DEFAULT_IMAGE_GUIDED_THRESHOLD
        } else {
            DEFAULT_THRESHOLD
        }),
        nms_iou: args.nms_iou.unwrap_or(if image_guided {
            DEFAULT_IMAGE_GUIDED_NMS_IOU
        } else {
            DEFAULT_TEXT_NMS_IOU
        }),
    };
    if !(0.0..=1.0).contains(&params.threshold) {
        anyhow::bail!("--threshold must be in [0, 1], got {}", params.threshold);
    }
    if params.nms_iou.is_nan() || params.nms_iou <= 0.0 {
        anyhow::bail!("--nms-iou must be positive, got {}", params.nms_iou);
    }
    if !(0.0..=1.0).contains(&args.min_objectness) {
        anyhow::bail!(
            "--min-objectness must be in [0, 1], got {}",
            args.min_objectness
        );
    }
    let options = LoadOptions::parse(&args.model.device, &args.model.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    // Query images are read before the model loads, so that a bad one fails fast.
    let query_images = args
        .query_images
        .iter()
        .map(|path| image_io::load_rgb(path).context("cannot read --query-image"))
        .collect::<Result<Vec<_>>>()?;
    let detector = Detector::load(&args.model.model, &options)
        .with_context(|| format!("cannot load detection model `{}`", args.model.model))?;
    if args.min_objectness > 0.0 && !detector.has_objectness() {
        anyhow::bail!(
            "--min-objectness needs an OWLv2 checkpoint: `{}` is {}, which has no objectness head",
            args.model.model,
            detector.family().name()
        );
    }
    let result = if image_guided {
        let labels: Vec<String> = args.query_images.iter().map(|p| file_label(p)).collect();
        let queries = detector.encode_query_images(&query_images, &labels)?;
        if let QueryKind::Image { best_box_indices } = &queries.kind {
            tracing::info!(?labels, ?best_box_indices, "query boxes chosen");
        }
        detector.detect_image_guided(&image, &queries, &params)?
    } else {
        let queries = detector.encode_queries(&args.queries)?;
        detector.detect_with_min_objectness(&image, &queries, &params, args.min_objectness)?
    };

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
        // OWLv2 detections of text queries get an objectness column.
        let objectness = result.detections.iter().any(|d| d.objectness.is_some());
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

/// A query image's label: its file name (the whole path when it has none).
fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
