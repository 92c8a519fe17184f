//! `vlm-perception classify`.

use anyhow::{Context, Result};
use vlm_perception::{
    pipeline::{Classifier, LoadOptions},
    vision::image_io,
};

use crate::args::ClassifyArgs;

pub fn run(args: &ClassifyArgs) -> Result<()> {
    let options = LoadOptions::parse(&args.model.device, &args.model.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    let model = Classifier::load(&args.model.model, &options)
        .with_context(|| format!("cannot load CLIP model `{}`", args.model.model))?;
    let labels = model
        .encode_labels(&args.labels, &args.template)
        .context("cannot encode the labels")?;
    let result = model
        .classify(&image, &labels)
        .with_context(|| format!("cannot classify `{}`", args.image.display()))?;

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{} label(s) for {}x{} ({:.1} ms)",
            result.labels.len(),
            result.width,
            result.height,
            result.timings.total().as_secs_f64() * 1e3
        );
        println!("label                             score     logit");
        for l in &result.labels {
            println!("{:<32} {:>6.4} {:>9.4}", l.label, l.score, l.logit);
        }
    }
    Ok(())
}
