//! CLIPSeg parity with transformers 5.17.0 on the tiny random checkpoints of
//! scripts/make_fixtures.py (clipseg-tiny-rd16: simple head, 4x4 position table interpolated to
//! 6x6; clipseg-tiny-complex: complex head, 3x3 table to 5x5, conditional_layer 1): prompt ids,
//! preprocessing, conditional embeddings, logits (text and image prompts), the one-image-pass
//! batching, mask post-processing and the `segment` CLI end to end.
//!
//! Tolerances (stated once, used below):
//! - logits from the reference pixel values: max |ours - ref| <= 1e-4 * max |ref| (the spec:
//!   1e-4 relative to the logit scale); conditional embeddings 1e-5 absolute;
//! - preprocessing: 1e-6 at model size (no resize); with resizing one uint8 level
//!   (1/255/std = 0.0175 for ImageNet's smallest std 0.224) against transformers' PIL backend;
//! - the CLI at model size (no resize): the same 1e-4 relative on logits;
//! - the CLI on resized images (photos, and images smaller than a patch): the same 1e-4 relative
//!   against transformers' PIL-backend pixels run through the model (5e-3 for the JPEG photo,
//!   whose decoders differ).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use vlm_perception::models::clip::vision::ClipVisionTransformer;
use vlm_perception::models::clipseg::ClipSegConfig;
use vlm_perception::pipeline::{Checkpoint, PromptEmbeddings, SegmentParams, Segmenter};
use vlm_perception::vision::{image_io::load_rgb, masks::post_process_segmentation};

const MODELS: &[&str] = &["clipseg-tiny-rd16", "clipseg-tiny-complex"];
/// Relative logit tolerance (times max |reference logit|).
const LOGIT_REL_TOL: f32 = 1e-4;
const EMBED_TOL: f32 = 1e-5;

fn stems(model: &str) -> Vec<String> {
    stems_at_least(model, 4)
}

fn prompts(meta: &serde_json::Value) -> Vec<String> {
    strings(meta, "prompts")
}

fn at_model_size(meta: &serde_json::Value) -> bool {
    meta["original_size_hw"] == meta["processor_input_size_hw"]
}

fn load(model: &str) -> Segmenter {
    Segmenter::load(model_dir(model).to_str().unwrap(), &load_options()).unwrap()
}

/// max |a - b| / max |b|
fn rel_diff(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let d = max_abs_diff(ours, reference);
    (d, d / max_abs(reference))
}

#[test]
fn prompt_ids_match_processor_including_padding_and_truncation() {
    for model in MODELS {
        let seg = load(model);
        for stem in stems(model) {
            let dir = reference_dir(model, &stem);
            let m = meta(model, &stem);
            let ps = prompts(&m);
            let batch = seg
                .tokenizer()
                .encode(&ps, vlm_perception::pipeline::tokenizer::Padding::Longest)
                .unwrap();
            assert_ids_match_processor(&batch, &dir, false, &format!("{model}/{stem}"));
            // Only clipseg-tiny-complex's long second prompt exceeds its 12 positions.
            let expect_truncated: Vec<bool> = (0..ps.len())
                .map(|i| *model == "clipseg-tiny-complex" && i == 1)
                .collect();
            assert_eq!(batch.truncated, expect_truncated, "{model}/{stem}");
        }
    }
}

#[test]
fn eos_pooling_picks_the_first_eos_when_padding_is_eos() {
    // The fixtures pad with <|endoftext|> (49407), the EOS id: pooling must take the first one.
    let seg = load("clipseg-tiny-rd16");
    let ids = vec![
        vec![49406, 320, 2368, 49407, 49407, 49407],
        vec![49406, 320, 49407, 49407, 49407, 49407],
    ];
    assert_eq!(seg.model().pooling_positions(&ids), [3, 2]);
}

#[test]
fn preprocessing_matches_pil_within_one_level() {
    const ONE_LEVEL: f32 = 1.0 / 255.0 / 0.224 + 1e-5;
    for model in MODELS {
        let seg = load(model);
        for stem in stems(model) {
            let dir = reference_dir(model, &stem);
            let m = meta(model, &stem);
            let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
            let ours = seg.pixel_values(&img).unwrap();
            let tol = if at_model_size(&m) { 1e-6 } else { ONE_LEVEL };
            let what = format!("{model}/{stem}");
            assert_pixels_match_pil(&ours, &dir, tol, 0.1 * ONE_LEVEL, &what);
        }
    }
}

#[test]
fn logits_match_reference_from_reference_pixels() {
    for model in MODELS {
        let seg = load(model);
        for stem in stems(model) {
            let dir = reference_dir(model, &stem);
            let m = meta(model, &stem);
            let p = seg.encode_prompts(&prompts(&m)).unwrap();
            let cond_ref = npy_f32(&dir.join("conditional_embeddings.npy"));
            let d = max_abs_diff(&p.embeds, &cond_ref);
            assert!(
                d < EMBED_TOL,
                "{model}/{stem}: conditional embeddings differ by {d}"
            );

            let pixel_values = npy_f32(&dir.join("pixel_values.npy"));
            let logits = seg.forward(&pixel_values, &p).unwrap();
            let reference = npy_f32(&dir.join("logits.npy"));
            let (abs, rel) = rel_diff(&logits, &reference);
            eprintln!(
                "{model}/{stem}: logits max abs diff {abs:.2e}, relative to max |logit| {:.2}: {rel:.2e}",
                max_abs(&reference)
            );
            assert!(
                rel <= LOGIT_REL_TOL,
                "{model}/{stem}: logits differ by {abs} ({rel} relative)"
            );
        }
    }
}

#[test]
fn one_image_pass_equals_transformers_repeated_image_batch() {
    // transformers runs the image once per prompt ([image] * prompts); the model's forward
    // accepts that layout too. Both must give the reference logits, and agree with each other.
    for model in MODELS {
        let seg = load(model);
        let dir = reference_dir(model, "chelsea");
        let ids = npy_ids(&dir.join("input_ids.npy"));
        let n = ids.len();
        let ids = Tensor::new(ids, &Device::Cpu).unwrap();
        let pv = npy_f32(&dir.join("pixel_values.npy"));
        let repeated = pv.repeat((n, 1, 1, 1)).unwrap();
        let once = seg.model().forward(&ids, &pv).unwrap();
        let per_prompt = seg.model().forward(&ids, &repeated).unwrap();
        let reference = npy_f32(&dir.join("logits.npy"));
        let (_, rel_once) = rel_diff(&once.logits, &reference);
        let (_, rel_rep) = rel_diff(&per_prompt.logits, &reference);
        assert!(
            rel_once <= LOGIT_REL_TOL && rel_rep <= LOGIT_REL_TOL,
            "{model}: {rel_once} / {rel_rep}"
        );
        let d = max_abs_diff(&once.logits, &per_prompt.logits);
        assert!(
            d <= 1e-5 * max_abs(&reference),
            "{model}: batched vs repeated differ by {d}"
        );
        // Each prompt's row does not depend on the others in the batch.
        let single = seg.model().forward(&ids.i(1..2).unwrap(), &pv).unwrap();
        let d = max_abs_diff(&single.logits, &once.logits.i(1..2).unwrap());
        assert!(
            d <= 1e-5 * max_abs(&reference),
            "{model}: one prompt alone differs by {d}"
        );
    }
}

#[test]
fn long_prompt_lists_decode_in_chunks_with_the_same_rows() {
    // More prompts than one decoder batch holds: every row must equal that prompt decoded
    // alone.
    let seg = load("clipseg-tiny-complex");
    let n = vlm_perception::models::clipseg::MAX_PROMPTS_PER_DECODE * 2 + 3;
    let texts: Vec<String> = (0..n).map(|i| format!("object number {i}")).collect();
    let p = seg.encode_prompts(&texts).unwrap();
    let pv =
        npy_f32(&reference_dir("clipseg-tiny-complex", "coffee_80x80").join("pixel_values.npy"));
    let all = seg.forward(&pv, &p).unwrap();
    assert_eq!(all.dims(), [n, 80, 80]);
    let image = seg.model().encode_image(&pv).unwrap();
    for i in [0, 15, 16, 17, n - 1] {
        let one = seg
            .model()
            .decode(&image, &p.embeds.i(i..i + 1).unwrap())
            .unwrap();
        let d = max_abs_diff(&one, &all.i(i..i + 1).unwrap());
        assert!(
            d <= 1e-5 * max_abs(&one),
            "prompt {i}: batched row differs by {d}"
        );
    }
}

#[test]
fn image_prompt_matches_reference() {
    let model = "clipseg-tiny-rd16";
    let seg = load(model);
    let dir = reference_dir(model, "chelsea");
    let m = meta(model, "chelsea");
    let prompt_img = load_rgb(&image_path(m["visual_prompt"].as_str().unwrap())).unwrap();
    // The prompt image is at the processor size: our preprocessing is exact.
    let cond_pv_ref = npy_f32(&dir.join("conditional_pixel_values.npy"));
    let d = max_abs_diff(&seg.pixel_values(&prompt_img).unwrap(), &cond_pv_ref);
    assert!(d < 1e-6, "conditional pixel values differ by {d}");

    let out = seg
        .model()
        .forward_visual_prompt(&npy_f32(&dir.join("pixel_values.npy")), &cond_pv_ref)
        .unwrap();
    let emb_ref = npy_f32(&dir.join("visual_prompt_conditional_embeddings.npy"));
    let d = max_abs_diff(&out.conditional_embeddings, &emb_ref);
    assert!(d < EMBED_TOL, "visual prompt embeddings differ by {d}");
    let reference = npy_f32(&dir.join("visual_prompt_logits.npy"));
    let (abs, rel) = rel_diff(&out.logits, &reference);
    eprintln!("{model}/chelsea visual prompt: logits max abs diff {abs:.2e} ({rel:.2e} relative)");
    assert!(
        rel <= LOGIT_REL_TOL,
        "visual prompt logits differ by {abs} ({rel} relative)"
    );

    // The pipeline path gives the same.
    let p = seg
        .encode_image_prompts(&[prompt_img], &["coffee crop"])
        .unwrap();
    let logits = seg
        .forward(&npy_f32(&dir.join("pixel_values.npy")), &p)
        .unwrap();
    let (_, rel) = rel_diff(&logits, &reference);
    assert!(rel <= LOGIT_REL_TOL, "pipeline image prompt: {rel}");
}

#[test]
fn text_and_image_prompts_mix_in_one_call() {
    // transformers takes text or image prompts per call; a mixed list must give, row for row,
    // the text prompts' reference logits and then the image prompt's.
    let model = "clipseg-tiny-rd16";
    let seg = load(model);
    let dir = reference_dir(model, "chelsea");
    let m = meta(model, "chelsea");
    let visual = m["visual_prompt"].as_str().unwrap();
    let prompt_img = load_rgb(&image_path(visual)).unwrap();
    let text = seg.encode_prompts(&prompts(&m)).unwrap();
    let example = seg
        .image_prompts(std::slice::from_ref(&prompt_img), &[visual])
        .unwrap();
    // Cached by label and pixels: the same image again is not embedded again.
    assert!(std::sync::Arc::ptr_eq(
        &example,
        &seg.image_prompts(std::slice::from_ref(&prompt_img), &[visual])
            .unwrap()
    ));
    let mixed = PromptEmbeddings::concat(&[&text, &example]).unwrap();
    assert_eq!(mixed.len(), text.len() + 1);
    assert_eq!(mixed.texts.last().unwrap(), visual);
    let logits = seg
        .forward(&npy_f32(&dir.join("pixel_values.npy")), &mixed)
        .unwrap();
    let reference = Tensor::cat(
        &[
            npy_f32(&dir.join("logits.npy")),
            npy_f32(&dir.join("visual_prompt_logits.npy")),
        ],
        0,
    )
    .unwrap();
    let (abs, rel) = rel_diff(&logits, &reference);
    assert!(
        rel <= LOGIT_REL_TOL,
        "mixed prompts: {abs} ({rel} relative)"
    );
    assert!(seg.image_prompts(&[prompt_img], &["a", "b"]).is_err());
    assert!(PromptEmbeddings::concat(&[]).is_err());

    // The CLI: text prompts first, then each --prompt-image labelled by file name, with the
    // library's masks.
    let out = segment_cli(
        model,
        "chelsea.png",
        &prompts(&m),
        &["--prompt-image", image_path(visual).to_str().unwrap()],
    );
    let entries = out["prompts"].as_array().unwrap();
    assert_eq!(entries.len(), text.len() + 1);
    assert_eq!(entries.last().unwrap()["prompt"], visual);
    let want = seg
        .segment(
            &load_rgb(&image_path("chelsea.png")).unwrap(),
            &mixed,
            &SegmentParams::default(),
        )
        .unwrap();
    for (e, w) in entries.iter().zip(&want.masks) {
        let area = e["area_fraction"].as_f64().unwrap() as f32;
        assert!(
            (area - w.area_fraction).abs() < 1e-6,
            "{e} vs {}",
            w.area_fraction
        );
    }
    let images_only = segment_cli(
        model,
        "chelsea.png",
        &[],
        &["--prompt-image", image_path(visual).to_str().unwrap()],
    );
    assert_eq!(images_only["prompts"].as_array().unwrap().len(), 1);
}

#[test]
fn vision_tower_split_reads_the_checkpoint_layers() {
    // Segmentation runs the encoder only up to the last extracted layer; image prompts run
    // the remaining layers from a second encoder over the same checkpoint keys. The fixtures
    // extract their last layer, so split the 4-layer rd16 tower by hand at every layer: the
    // pooled output must equal the unsplit tower's, bit for bit.
    let ckpt = Checkpoint::resolve(model_dir("clipseg-tiny-rd16").to_str().unwrap()).unwrap();
    let cfg: ClipSegConfig = ckpt.config().unwrap();
    let v = &cfg.vision_config;
    let encoder_cfg = v.encoder_config("clipseg-tiny-rd16").unwrap();
    let vb = ckpt.model_vars(&load_options()).unwrap();
    let tower = |needed: usize| {
        ClipVisionTransformer::new(vb.pp("clip").pp("vision_model"), v, &encoder_cfg, needed)
            .unwrap()
    };
    let pv = npy_f32(
        &reference_dir("clipseg-tiny-rd16", "chelsea").join("conditional_pixel_values.npy"),
    );
    let full = tower(v.num_hidden_layers).pooled_output(&pv).unwrap();
    for needed in 1..v.num_hidden_layers {
        let split = tower(needed);
        assert_eq!(split.encoder_outputs(&pv).unwrap().len(), needed);
        let d = max_abs_diff(&split.pooled_output(&pv).unwrap(), &full);
        assert_eq!(
            d, 0.0,
            "split after {needed} layers changes the pooled output by {d}"
        );
    }
}

#[test]
fn interpolated_position_table_is_cached_per_size() {
    let seg = load("clipseg-tiny-rd16");
    let emb = seg.model().vision_model().embeddings();
    let a = emb.position_embeddings(96, 96).unwrap();
    let b = emb.position_embeddings(96, 96).unwrap();
    assert_eq!(a.dims(), [1 + 36, 32]);
    assert_eq!(a.id(), b.id(), "the 6x6 table must come from the cache");
    // The stored 4x4 table is used as is at the vision config's own size.
    let native = emb.position_embeddings(64, 64).unwrap();
    assert_eq!(native.dims(), [1 + 16, 32]);
    // The class position is never interpolated.
    let d = max_abs_diff(&a.i(0).unwrap(), &native.i(0).unwrap());
    assert_eq!(d, 0.0);
}

#[test]
fn prompt_embeddings_are_cached_per_list() {
    let seg = load("clipseg-tiny-rd16");
    let a = seg.prompts(&["a cat", "rocket"]).unwrap();
    let b = seg.prompts(&["a cat", "rocket"]).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "same list must hit the cache"
    );
    let c = seg.prompts(&["rocket", "a cat"]).unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&a, &c),
        "a reordered list is a new list"
    );
    assert_eq!(c.texts, ["rocket", "a cat"]);
}

fn segment_cli(model: &str, image: &str, ps: &[String], extra: &[&str]) -> serde_json::Value {
    let model = model_dir(model);
    let image = image_path(image);
    let mut args: Vec<String> = vec![
        "segment".into(),
        "--model".into(),
        model.to_str().unwrap().into(),
        "--image".into(),
        image.to_str().unwrap().into(),
        "--json".into(),
    ];
    for p in ps {
        args.push("--prompt".into());
        args.push(p.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_json(&refs)
}

#[test]
fn cli_segment_matches_reference_at_model_size() {
    // coffee_96x96 / coffee_80x80 are at the processor size: no resize, so the CLI's logits
    // must match the reference to the model tolerance, and its masks must be the reference
    // logits' masks.
    for model in MODELS {
        for stem in stems(model) {
            let m = meta(model, &stem);
            if !at_model_size(&m) {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let npy = dir.path().join("logits.npy");
            let masks_dir = dir.path().join("masks");
            let ps = prompts(&m);
            let out = segment_cli(
                model,
                m["image"].as_str().unwrap(),
                &ps,
                &[
                    "--logits-out",
                    npy.to_str().unwrap(),
                    "--masks-out",
                    masks_dir.to_str().unwrap(),
                ],
            );
            // --logits-out: little-endian float32, [prompts, H, W], C order.
            let bytes = std::fs::read(&npy).unwrap();
            let header = String::from_utf8_lossy(&bytes[..bytes.len().min(128)]);
            assert!(header.contains("'descr': '<f4'"), "{header}");
            assert!(header.contains("'fortran_order': False"), "{header}");
            let ours = Tensor::read_npy(&npy).unwrap();
            let reference = npy_f32(&reference_dir(model, &stem).join("logits.npy"));
            assert_eq!(ours.dims(), reference.dims());
            let (abs, rel) = rel_diff(&ours, &reference);
            eprintln!("{model}/{stem} CLI: logits max abs diff {abs:.2e} ({rel:.2e} relative)");
            assert!(
                rel <= LOGIT_REL_TOL,
                "{model}/{stem}: CLI logits differ by {abs} ({rel} relative)"
            );

            let (h, w) = (
                m["original_size_hw"][0].as_u64().unwrap() as u32,
                m["original_size_hw"][1].as_u64().unwrap() as u32,
            );
            assert_eq!(out["width"], w);
            assert_eq!(out["height"], h);
            let entries = out["prompts"].as_array().unwrap();
            assert_eq!(entries.len(), ps.len());
            let (lh, lw) = (reference.dims()[1], reference.dims()[2]);
            let ref_logits = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e["prompt"], ps[i].as_str());
                assert_eq!(e["prompt_index"], i);
                let expected = post_process_segmentation(
                    &ref_logits[i * lh * lw..(i + 1) * lh * lw],
                    (lh, lw),
                    w,
                    h,
                    SegmentParams::default().threshold,
                )
                .unwrap();
                let area = e["area_fraction"].as_f64().unwrap() as f32;
                // A pixel within ~1e-5 of the threshold could flip: allow one pixel.
                let px = 1.0 / (w * h) as f32;
                assert!(
                    (area - expected.stats.area_fraction).abs() <= px + 1e-7,
                    "{model}/{stem} #{i}: area {area} vs {}",
                    expected.stats.area_fraction
                );
                let mean = e["mean_score"].as_f64().unwrap() as f32;
                assert!(
                    (mean - expected.stats.mean_score).abs() < 1e-4,
                    "{model}/{stem} #{i}: mean {mean}"
                );
                match expected.stats.bbox {
                    None => assert!(e["bbox"].is_null()),
                    Some(b) => {
                        let ours: Vec<f32> = e["bbox"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_f64().unwrap() as f32)
                            .collect();
                        for (a, b) in ours.iter().zip(b.to_array()) {
                            assert!(
                                (a - b).abs() <= 1.0,
                                "{model}/{stem} #{i}: bbox {ours:?} vs {b}"
                            );
                        }
                    }
                }
                // The PNG mask is the thresholded map at the original size.
                let png = std::fs::read_dir(&masks_dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(&format!("mask_{i:02}_"))
                    })
                    .unwrap_or_else(|| panic!("no mask PNG for prompt {i}"));
                let mask = image::open(&png).unwrap().to_luma8();
                assert_eq!(mask.dimensions(), (w, h));
                assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
                let on = mask.pixels().filter(|p| p[0] == 255).count() as f32 / (w * h) as f32;
                assert!(
                    (on - area).abs() < 1e-6,
                    "{}: {on} vs {area}",
                    png.display()
                );
            }
            let overlay = image::open(masks_dir.join("overlay.png")).unwrap();
            assert_eq!((overlay.width(), overlay.height()), (w, h));
        }
    }
}

#[test]
fn cli_on_resized_images_matches_transformers_pil_backend() {
    // Every image that needs resizing - photos scaled down, and images smaller than one patch
    // (1x1, 31x33) or thin strips (500x1) scaled up, which transformers accepts - against the
    // same model call on transformers' PIL-backend pixels (`logits_pil.npy`): our resize is
    // Pillow's, so the model tolerance holds end to end. The torchvision-backend reference
    // (`logits.npy`) is printed for comparison: its cubic filter differs most when scaling up.
    // JPEG sources decode differently (zune-jpeg vs libjpeg-turbo, 0.005 levels per value on
    // rocket.jpg): measured 1.6e-3 of the logit scale there, bounded at 5e-3.
    const JPEG_REL_TOL: f32 = 5e-3;
    let decoded = json(&fixtures().join("images").join("decoded.json"));
    for model in MODELS {
        for stem in stems(model) {
            let m = meta(model, &stem);
            if at_model_size(&m) {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let npy = dir.path().join("logits.npy");
            let ps = prompts(&m);
            let out = segment_cli(
                model,
                m["image"].as_str().unwrap(),
                &ps,
                &["--logits-out", npy.to_str().unwrap()],
            );
            assert_eq!(out["width"], m["original_size_hw"][1]);
            assert_eq!(out["height"], m["original_size_hw"][0]);
            let ours = Tensor::read_npy(&npy).unwrap();
            let reference = npy_f32(&reference_dir(model, &stem).join("logits_pil.npy"));
            let (abs, rel) = rel_diff(&ours, &reference);
            let torchvision = npy_f32(&reference_dir(model, &stem).join("logits.npy"));
            let (_, rel_tv) = rel_diff(&ours, &torchvision);
            eprintln!(
                "{model}/{stem} CLI (resized input): logits max abs diff {abs:.2e} ({rel:.2e} \
                 relative; {rel_tv:.2e} against the torchvision backend)"
            );
            let lossless = decoded[m["image"].as_str().unwrap()]["lossless"]
                .as_bool()
                .unwrap();
            let tol = if lossless {
                LOGIT_REL_TOL
            } else {
                JPEG_REL_TOL
            };
            assert!(rel <= tol, "{model}/{stem}: {abs} ({rel} relative)");
        }
    }
}

#[test]
fn text_output_and_threshold_flag() {
    let model = model_dir("clipseg-tiny-rd16");
    let image = image_path("coffee_96x96.png");
    let base = [
        "segment",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "a cup of coffee on a plate",
    ];
    let out = cli(&base);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("96x96") && stdout.contains("a cup of coffee on a plate"),
        "{stdout}"
    );
    // Threshold 0 keeps every pixel whose probability is above 0 (all of them), 1 none.
    let mut all: Vec<&str> = base.to_vec();
    all.extend(["--json", "--threshold", "0"]);
    let v = cli_json(&all);
    assert_eq!(v["prompts"][0]["area_fraction"], 1.0);
    assert_eq!(
        v["prompts"][0]["bbox"],
        serde_json::json!([0.0, 0.0, 96.0, 96.0])
    );
    let mut none: Vec<&str> = base.to_vec();
    none.extend(["--json", "--threshold", "1"]);
    let v = cli_json(&none);
    assert_eq!(v["prompts"][0]["area_fraction"], 0.0);
    assert!(v["prompts"][0]["bbox"].is_null());
    assert_eq!(v["prompts"][0]["mean_score"], 0.0);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let model = model_dir("clipseg-tiny-rd16");
    let m = model.to_str().unwrap();
    let image = image_path("coffee.png");
    let img = image.to_str().unwrap();

    // No --prompt at all: a usage error (exit 2) naming the flag, not a panic.
    let out = cli(&["segment", "--model", m, "--image", img]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt"));
    // An empty prompt.
    assert_fails_with(
        &cli(&["segment", "--model", m, "--image", img, "--prompt", " "]),
        &["prompt 0 is empty"],
    );
    // A prompt image that is not an image.
    let not_image = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_image.path(), b"not a png").unwrap();
    assert_fails_with(
        &cli(&[
            "segment",
            "--model",
            m,
            "--image",
            img,
            "--prompt-image",
            not_image.path().to_str().unwrap(),
        ]),
        &["--prompt-image"],
    );
    // Threshold outside [0, 1].
    assert_fails_with(
        &cli(&[
            "segment",
            "--model",
            m,
            "--image",
            img,
            "--prompt",
            "a",
            "--threshold",
            "1.5",
        ]),
        &["threshold"],
    );
    // Wrong architecture.
    let vilt = model_dir("vilt-tiny-vqa");
    assert_fails_with(
        &cli(&[
            "segment",
            "--model",
            vilt.to_str().unwrap(),
            "--image",
            img,
            "--prompt",
            "a",
        ]),
        &["ViltForQuestionAnswering", "CLIPSegForImageSegmentation"],
    );
    // An image smaller than one 16 px patch is scaled up, as transformers' processor does.
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(12, 40, image::Rgb([10, 200, 30]))
        .save(&tiny)
        .unwrap();
    let out = segment_cli(
        "clipseg-tiny-rd16",
        tiny.to_str().unwrap(),
        &["a".to_string()],
        &[],
    );
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(12), Some(40))
    );
    // A config.json the decoder cannot be built from, and one that does not match the weights.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg = json(&copy.path().join("config.json"));
    let mut bad = cfg.clone();
    bad["extract_layers"] = serde_json::json!([0, 7]);
    std::fs::write(copy.path().join("config.json"), bad.to_string()).unwrap();
    let c = copy.path().to_str().unwrap();
    assert_fails_with(
        &cli(&["segment", "--model", c, "--image", img, "--prompt", "a"]),
        &["extract_layers names layer 7", "4 layers"],
    );
    let mut bad = cfg.clone();
    bad["reduce_dim"] = serde_json::json!(8);
    std::fs::write(copy.path().join("config.json"), bad.to_string()).unwrap();
    assert_fails_with(
        &cli(&["segment", "--model", c, "--image", img, "--prompt", "a"]),
        &["do not match config.json", "decoder"],
    );
    // A missing image file.
    assert_fails_with(
        &cli(&[
            "segment",
            "--model",
            m,
            "--image",
            "/no/such.png",
            "--prompt",
            "a",
        ]),
        &["/no/such.png"],
    );

    // The library refuses an empty prompt list.
    let seg = load("clipseg-tiny-rd16");
    let err = seg.encode_prompts::<&str>(&[]).unwrap_err();
    assert!(err.to_string().contains("no prompts given"), "{err}");
}

#[test]
fn f16_stays_close_to_f32() {
    // (bf16: tests/kernel_paths.rs, on both kernel paths.)
    let model = "clipseg-tiny-rd16";
    let dir = reference_dir(model, "coffee_96x96");
    let m = meta(model, "coffee_96x96");
    let reference = npy_f32(&dir.join("logits.npy"));
    let opts = load_options_in(DType::F16);
    let seg = Segmenter::load(model_dir(model).to_str().unwrap(), &opts).unwrap();
    let p = seg.encode_prompts(&prompts(&m)).unwrap();
    let pv = npy_f32(&dir.join("pixel_values.npy"))
        .to_dtype(opts.dtype)
        .unwrap();
    let logits = seg.forward(&pv, &p).unwrap();
    let (abs, rel) = rel_diff(&logits, &reference);
    eprintln!("{model} f16: logits max abs diff {abs:.2e} ({rel:.2e} relative)");
    // f16 keeps ~3 significant digits; measured 1.3e-3 relative.
    assert!(rel < 1e-2, "f16: logits differ by {abs} ({rel} relative)");
}

#[test]
fn task_object_is_shareable_across_threads() {
    // The ROS node keeps one loaded model behind an Arc and calls it from worker threads.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Segmenter>();
    assert_send_sync::<vlm_perception::pipeline::PromptEmbeddings>();
}
