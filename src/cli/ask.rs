//! `vlm-perception ask`: ViLT (ranked answers) or BLIP VQA (a generated answer), from the
//! checkpoint's config.json.

use anyhow::{Context, Result};
use vlm_perception::{
    pipeline::{BlipGenerator, Checkpoint, LoadOptions, VqaModel},
    vision::image_io,
};

use crate::args::AskArgs;

pub fn run(args: &AskArgs) -> Result<()> {
    if args.top_k == 0 {
        anyhow::bail!("--top-k must be at least 1");
    }
    let options = LoadOptions::parse(&args.model.device, &args.model.dtype)?;
    let image = image_io::load_rgb(&args.image)?;
    let ckpt = Checkpoint::resolve(&args.model.model)
        .with_context(|| format!("cannot load VQA model `{}`", args.model.model))?;
    if BlipGenerator::is_blip(&ckpt)? {
        return run_blip(args, &ckpt, &options, &image);
    }
    if args.generation.is_set() {
        anyhow::bail!("--num-beams and --max-new-tokens apply to BLIP VQA checkpoints only");
    }
    let model = VqaModel::from_checkpoint(&ckpt, &options)
        .with_context(|| format!("cannot load VQA model `{}`", args.model.model))?;
    let result = model
        .ask(&image, &args.question, args.top_k)
        .with_context(|| format!("cannot answer about `{}`", args.image.display()))?;

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "Q: {} ({:.1} ms)",
            result.question,
            result.timings.total().as_secs_f64() * 1e3
        );
        for (i, a) in result.answers.iter().enumerate() {
            println!("{:>3}. {:<24} {:.3}", i + 1, a.answer, a.score);
        }
    }
    Ok(())
}

fn run_blip(
    args: &AskArgs,
    ckpt: &Checkpoint,
    options: &LoadOptions,
    image: &image::RgbImage,
) -> Result<()> {
    let model = BlipGenerator::from_checkpoint(ckpt, options)
        .with_context(|| format!("cannot load VQA model `{}`", args.model.model))?;
    let result = model
        .answer(image, &args.question, &args.generation.config())
        .with_context(|| format!("cannot answer about `{}`", args.image.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "Q: {} ({:.1} ms)",
            args.question,
            result.timings.total().as_secs_f64() * 1e3
        );
        println!("A: {}", result.text);
    }
    Ok(())
}
