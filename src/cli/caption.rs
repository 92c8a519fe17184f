//! `vlm-perception caption`.

use anyhow::{Context, Result};
use vlm_perception::{
    pipeline::{Captioner, LoadOptions},
    vision::image_io,
};

use crate::args::CaptionArgs;

pub fn run(args: &CaptionArgs) -> Result<()> {
    let options = LoadOptions::parse(&args.model.device, &args.model.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    let model = Captioner::load(&args.model.model, &options)
        .with_context(|| format!("cannot load BLIP model `{}`", args.model.model))?;
    let result = model
        .caption(&image, args.prompt.as_deref(), &args.generation.config())
        .with_context(|| format!("cannot caption `{}`", args.image.display()))?;

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{}", result.text);
        eprintln!(
            "{} token(s), {:?} ({:.1} ms)",
            result.token_ids.len(),
            result.stop,
            result.timings.total().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
