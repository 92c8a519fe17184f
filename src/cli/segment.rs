//! `vlm-perception segment`.

use std::path::Path;

use anyhow::{Context, Result};
use vlm_perception::{
    pipeline::{LoadOptions, PromptEmbeddings, SegmentParams, SegmentationResult, Segmenter},
    vision::{draw, image_io, masks::MASK_OFF},
};

use crate::args::{file_label, SegmentArgs};

/// Opacity of each prompt's colour in the overlay.
const OVERLAY_ALPHA: f32 = 0.5;
/// Longest prompt slug in mask file names, in characters.
const SLUG_CHARS: usize = 40;

pub fn run(args: &SegmentArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.threshold) {
        anyhow::bail!("--threshold must be in [0, 1], got {}", args.threshold);
    }
    let options = LoadOptions::parse(&args.model.device, &args.model.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    let prompt_images = args
        .prompt_images
        .iter()
        .map(|path| image_io::load_rgb(path).context("cannot read --prompt-image"))
        .collect::<Result<Vec<_>>>()?;
    let segmenter = Segmenter::load(&args.model.model, &options)
        .with_context(|| format!("cannot load segmentation model `{}`", args.model.model))?;
    let text = if args.prompts.is_empty() {
        None
    } else {
        Some(segmenter.encode_prompts(&args.prompts)?)
    };
    let examples = if prompt_images.is_empty() {
        None
    } else {
        let labels: Vec<String> = args.prompt_images.iter().map(|p| file_label(p)).collect();
        Some(segmenter.encode_image_prompts(&prompt_images, &labels)?)
    };
    let parts: Vec<&PromptEmbeddings> = [text.as_ref(), examples.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let prompts = PromptEmbeddings::concat(&parts)?;
    let params = SegmentParams {
        threshold: args.threshold,
    };
    let result = segmenter
        .segment(&image, &prompts, &params)
        .with_context(|| format!("cannot segment `{}`", args.image.display()))?;

    if let Some(path) = &args.logits_out {
        result
            .logits
            .write_npy(path)
            .with_context(|| format!("cannot write logits `{}`", path.display()))?;
    }
    if let Some(dir) = &args.masks_out {
        write_masks(dir, &image, &result)
            .with_context(|| format!("cannot write masks to `{}`", dir.display()))?;
    }

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result);
    }
    Ok(())
}

fn print_table(result: &SegmentationResult) {
    println!(
        "{} prompt(s) on {}x{} ({:.1} ms)",
        result.masks.len(),
        result.width,
        result.height,
        result.timings.total().as_secs_f64() * 1e3
    );
    println!(
        "{:>3}  {:<32} {:>6} {:>6}  {:>7} {:>7} {:>7} {:>7}",
        "#", "prompt", "area", "mean", "x_min", "y_min", "x_max", "y_max"
    );
    for m in &result.masks {
        let bbox = match m.bbox {
            Some(b) => {
                let [x0, y0, x1, y1] = b.to_array();
                format!("{x0:>7.0} {y0:>7.0} {x1:>7.0} {y1:>7.0}")
            }
            None => format!("{:>7} {:>7} {:>7} {:>7}", "-", "-", "-", "-"),
        };
        println!(
            "{:>3}  {:<32} {:>6.3} {:>6.3}  {bbox}",
            m.prompt_index,
            truncate(&m.label, 32),
            m.area_fraction,
            m.mean_score
        );
    }
}

/// `mask_<index>_<slug>.png` per prompt (0/255, original size) and `overlay.png`.
fn write_masks(dir: &Path, image: &image::RgbImage, result: &SegmentationResult) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut overlay = image.clone();
    for m in &result.masks {
        let path = dir.join(format!("mask_{:02}_{}.png", m.prompt_index, slug(&m.label)));
        m.mask
            .save(&path)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        let on: Vec<bool> = m.mask.pixels().map(|p| p[0] != MASK_OFF).collect();
        draw::tint_mask(
            &mut overlay,
            &on,
            draw::palette_color(m.prompt_index),
            OVERLAY_ALPHA,
        );
    }
    for m in &result.masks {
        if let Some(b) = &m.bbox {
            draw::draw_labelled_box(
                &mut overlay,
                b,
                &m.label,
                draw::palette_color(m.prompt_index),
            );
        }
    }
    let path = dir.join("overlay.png");
    overlay
        .save(&path)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

/// A file-name-safe form of a prompt: lowercase ASCII letters and digits, runs of anything
/// else as one `_`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
        if out.len() >= SLUG_CHARS {
            break;
        }
    }
    let out = out.trim_matches('_').to_string();
    if out.is_empty() {
        "prompt".into()
    } else {
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(slug("a cup of coffee"), "a_cup_of_coffee");
        assert_eq!(slug("  the Red/blue  block! "), "the_red_blue_block");
        assert_eq!(slug("ßü"), "prompt");
        assert!(slug(&"x".repeat(100)).len() <= SLUG_CHARS);
    }
}
