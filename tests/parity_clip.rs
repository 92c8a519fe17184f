//! CLIP zero-shot image classification parity with transformers 5.17.0's
//! `pipeline("zero-shot-image-classification")` on the tiny random `CLIPModel` checkpoints of
//! scripts/make_clip_fixtures.py (clip-tiny: safetensors, tokenizer.json, pooling at the first
//! EOS, a 64 px CLIPImageProcessor; clip-tiny-bin: pytorch_model.bin, vocabulary files only, the
//! legacy argmax pooling, GELU, the 224 px processor defaults), six label sets x templates per
//! image: label ids, preprocessing, logits, probabilities and their order, the `classify` CLI,
//! and bad input.
//!
//! Tolerances (stated once, used below):
//! - probabilities: 1e-5 absolute, against the pipeline's scores (from the pipeline's own
//!   pixels, and end to end with our preprocessing against the pipeline on transformers' PIL
//!   backend); the order of the labels identical;
//! - logits_per_image: max |ours - ref| <= 1e-5 * logit_scale.exp() (the cosine similarities to
//!   1e-5; relative to the logits themselves, a single label's logit near 0 would be held to
//!   less than f32 rounding);
//! - pixel values: 1e-6 where the processor does not resample; with resizing one uint8 level
//!   (1/255/std = 0.0150 for CLIP's smallest std 0.2613) against transformers' PIL backend (the
//!   resize is Pillow's: PNGs come out exact); PIL pixels' per-channel statistics (224 px
//!   fixture, which stores no arrays) to 1e-5;
//! - JPEG (rocket.jpg): the `image` crate's decoder and Pillow's differ by ~0.005 levels per
//!   value, so end to end there: probabilities 1e-3, logits 1e-3 relative, statistics 1e-3.

mod common;

use std::sync::Arc;

use candle_core::Tensor;
use common::*;
use vlm_perception::pipeline::classify::{format_hypothesis, probabilities};
use vlm_perception::pipeline::tokenizer::Padding;
use vlm_perception::pipeline::{Classifier, DEFAULT_HYPOTHESIS_TEMPLATE};
use vlm_perception::vision::image_io::load_rgb;

const MODELS: &[&str] = &["clip-tiny", "clip-tiny-bin"];
const PROB_TOL: f32 = 1e-5;
const LOGIT_REL_TOL: f32 = 1e-5;
const STATS_TOL: f32 = 1e-5;
const JPEG_TOL: f32 = 1e-3;
/// One uint8 level in normalized units for CLIP's smallest std, plus rounding.
const ONE_LEVEL: f32 = 1.0 / 255.0 / 0.261_302_6 + 1e-5;

fn load(model: &str) -> Classifier {
    Classifier::load(model_dir(model).to_str().unwrap(), &load_options()).unwrap()
}

fn stems(model: &str) -> Vec<String> {
    stems_at_least(model, 3)
}

fn cases(meta: &serde_json::Value) -> &Vec<serde_json::Value> {
    meta["cases"].as_array().unwrap()
}

fn template(case: &serde_json::Value) -> String {
    case["hypothesis_template"]
        .as_str()
        .unwrap_or(DEFAULT_HYPOTHESIS_TEMPLATE)
        .to_string()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn u32_rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn is_jpeg(meta: &serde_json::Value) -> bool {
    meta["image"].as_str().unwrap().ends_with(".jpg")
}

/// max |ours - ref| / `logit_scale.exp()` over two rows of logits: the largest difference of
/// the cosine similarities.
fn logit_rel(ours: &[f32], reference: &[f32], meta: &serde_json::Value) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let d = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    d / meta["logit_scale_exp"].as_f64().unwrap() as f32
}

/// Our ranked labels against the pipeline's result list: the same labels in the same order
/// (labels with equal reference scores may come in either order only if the references tie),
/// scores within `tol`. Returns the largest score difference.
fn assert_ranking(
    ours: &[vlm_perception::pipeline::LabelScore],
    reference: &serde_json::Value,
    tol: f32,
    what: &str,
) -> f32 {
    let reference = reference.as_array().unwrap();
    assert_eq!(ours.len(), reference.len(), "{what}: label count");
    let mut worst = 0f32;
    for (i, (o, r)) in ours.iter().zip(reference).enumerate() {
        let (label, score) = (
            r["label"].as_str().unwrap(),
            r["score"].as_f64().unwrap() as f32,
        );
        assert_eq!(o.label, label, "{what}: label at rank {i}");
        let d = (o.score - score).abs();
        assert!(
            d <= tol,
            "{what}: rank {i} ({label}): {} vs {score}",
            o.score
        );
        worst = worst.max(d);
    }
    worst
}

#[test]
fn label_ids_match_the_pipeline_tokenizer() {
    for model in MODELS {
        let clf = load(model);
        // the label batches are the same for every image: check them on one
        let m = meta(model, &stems(model)[0]);
        for case in cases(&m) {
            let labels = strings(case, "labels");
            let t = template(case);
            let sequences: Vec<String> = labels
                .iter()
                .map(|l| format_hypothesis(&t, l).unwrap())
                .collect();
            assert_eq!(sequences, strings(case, "sequences"), "{model}: {t:?}");
            let batch = clf
                .tokenizer()
                .encode(&sequences, Padding::Longest)
                .unwrap();
            assert_eq!(
                batch.ids,
                u32_rows(&case["input_ids"]),
                "{model}: {sequences:?}"
            );
            assert_eq!(batch.attention_mask, u32_rows(&case["attention_mask"]));
            let embedded = clf.encode_labels(&labels, &t).unwrap();
            assert_eq!(embedded.sequences, sequences);
            assert!(embedded.truncated.iter().all(|&t| !t));
        }
    }
}

#[test]
fn preprocessing_matches_pil() {
    // clip-tiny: the arrays
    let model = "clip-tiny";
    let clf = load(model);
    for stem in stems(model) {
        let dir = reference_dir(model, &stem);
        let m = meta(model, &stem);
        let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
        let ours = clf.pixel_values(&img).unwrap();
        let tol = if is_jpeg(&m) { ONE_LEVEL } else { 1e-6 };
        assert_pixels_match_pil(
            &ours,
            &dir,
            tol,
            0.1 * ONE_LEVEL,
            &format!("{model}/{stem}"),
        );
    }
    // clip-tiny-bin (224 px, CLIPImageProcessor's defaults): per-channel statistics
    let model = "clip-tiny-bin";
    let clf = load(model);
    for stem in stems(model) {
        let m = meta(model, &stem);
        let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
        let ours = clf.pixel_values(&img).unwrap().squeeze(0).unwrap();
        assert_eq!(ours.dims(), [3, 224, 224]);
        let stats = &m["pixel_values_pil_stats"];
        let flat = ours.flatten_from(1).unwrap();
        let mean = flat.mean(1).unwrap();
        let centred = flat.broadcast_sub(&mean.unsqueeze(1).unwrap()).unwrap();
        // torch.std: the unbiased estimate
        let n = flat.dim(1).unwrap() as f64;
        let std = ((centred.sqr().unwrap().sum(1).unwrap() / (n - 1.0)).unwrap())
            .sqrt()
            .unwrap();
        let ours_stats = [
            ("mean", mean),
            ("std", std),
            ("min", flat.min(1).unwrap()),
            ("max", flat.max(1).unwrap()),
        ];
        let tol = if is_jpeg(&m) { JPEG_TOL } else { STATS_TOL };
        for (key, t) in ours_stats {
            let got = t.to_vec1::<f32>().unwrap();
            let want = floats(&stats[key]);
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("{model}/{stem}: pixel {key} differs by {d:.2e}");
            assert!(d <= tol, "{model}/{stem}: {key} {got:?} vs {want:?}");
        }
    }
}

#[test]
fn probabilities_match_the_pipeline_from_its_pixels() {
    let model = "clip-tiny";
    let clf = load(model);
    let (mut worst_prob, mut worst_logit) = (0f32, 0f32);
    for stem in stems(model) {
        let dir = reference_dir(model, &stem);
        let m = meta(model, &stem);
        let pixel_values = npy_f32(&dir.join("pixel_values.npy"));
        for case in cases(&m) {
            let what = format!("{model}/{stem} {:?}", case["labels"]);
            let labels = clf
                .labels(&strings(case, "labels"), &template(case))
                .unwrap();
            let logits = clf.forward(&pixel_values, &labels).unwrap();
            let row = logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            let rel = logit_rel(&row, &floats(&case["logits_per_image"]), &m);
            assert!(rel <= LOGIT_REL_TOL, "{what}: logits {row:?} ({rel})");
            worst_logit = worst_logit.max(rel);
            let probs = probabilities(&logits).unwrap().squeeze(0).unwrap();
            let d = max_abs_diff(
                &probs,
                &Tensor::new(floats(&case["probabilities"]), probs.device()).unwrap(),
            );
            assert!(d <= PROB_TOL, "{what}: probabilities differ by {d}");
            let ranked =
                vlm_perception::pipeline::classify::rank_labels(&labels.labels, &row).unwrap();
            worst_prob =
                worst_prob.max(assert_ranking(&ranked, &case["pipeline"], PROB_TOL, &what));
        }
    }
    eprintln!(
        "{model}: from the pipeline's pixels, probabilities within {worst_prob:.2e}, logits \
         {worst_logit:.2e} of the logit scale"
    );
}

#[test]
fn classify_matches_the_pil_pipeline_end_to_end() {
    for model in MODELS {
        let clf = load(model);
        let (mut worst_prob, mut worst_logit) = (0f32, 0f32);
        let mut worst_jpeg = (0f32, 0f32);
        for stem in stems(model) {
            let m = meta(model, &stem);
            let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
            let (prob_tol, logit_tol) = if is_jpeg(&m) {
                (JPEG_TOL, JPEG_TOL)
            } else {
                (PROB_TOL, LOGIT_REL_TOL)
            };
            for case in cases(&m) {
                let what = format!("{model}/{stem} {:?}", case["labels"]);
                let labels = clf
                    .labels(&strings(case, "labels"), &template(case))
                    .unwrap();
                let result = clf.classify(&img, &labels).unwrap();
                assert_eq!((result.width, result.height), img.dimensions());
                let d = assert_ranking(&result.labels, &case["pipeline_pil"], prob_tol, &what);
                let mut logits = vec![0f32; labels.len()];
                for l in &result.labels {
                    logits[l.label_index] = l.logit;
                }
                let rel = logit_rel(&logits, &floats(&case["logits_per_image_pil"]), &m);
                assert!(rel <= logit_tol, "{what}: logits {logits:?} ({rel})");
                if is_jpeg(&m) {
                    worst_jpeg = (worst_jpeg.0.max(d), worst_jpeg.1.max(rel));
                } else {
                    worst_prob = worst_prob.max(d);
                    worst_logit = worst_logit.max(rel);
                }
            }
        }
        eprintln!(
            "{model}: end to end (PNG), probabilities within {worst_prob:.2e}, logits \
             {worst_logit:.2e} of the logit scale"
        );
        eprintln!(
            "{model}: end to end (JPEG), probabilities within {:.2e}, logits {:.2e}",
            worst_jpeg.0, worst_jpeg.1
        );
    }
}

#[test]
fn cli_json_matches_the_pipeline() {
    for (model, case_index) in [("clip-tiny-bin", 2), ("clip-tiny", 5)] {
        let m = meta(model, "chelsea");
        let case = &cases(&m)[case_index];
        let dir = model_dir(model);
        let image = image_path("chelsea.png");
        let t = template(case);
        let mut args = vec![
            "classify",
            "--model",
            dir.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--template",
            &t,
            "--json",
        ];
        let labels = strings(case, "labels");
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        let out = cli_json(&args);
        assert_eq!(out["width"], 451);
        assert_eq!(out["template"], t.as_str());
        let ours: Vec<(String, f32)> = out["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["label"].as_str().unwrap().to_string(),
                    l["score"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        for ((label, score), r) in ours.iter().zip(case["pipeline_pil"].as_array().unwrap()) {
            assert_eq!(label, r["label"].as_str().unwrap());
            assert!((score - r["score"].as_f64().unwrap() as f32).abs() <= PROB_TOL);
        }
    }
    // the default template and the table output
    let dir = model_dir("clip-tiny");
    let out = cli(&[
        "classify",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        image_path("coffee.png").to_str().unwrap(),
        "--label",
        "door open",
        "--label",
        "door closed",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 label(s) for 600x400") && stdout.contains("door closed"),
        "{stdout}"
    );
}

#[test]
fn label_embeddings_are_cached_per_list_and_template() {
    let clf = load("clip-tiny");
    let a = clf.labels(&["cat", "dog"], "{}").unwrap();
    let b = clf.labels(&["cat", "dog"], "{}").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let c = clf.labels(&["cat", "dog"], "a {}").unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(c.sequences, ["a cat", "a dog"]);
    let d = clf.labels(&["cat"], "{}").unwrap();
    assert_eq!(d.len(), 1);
}

#[test]
fn bad_input_gives_clear_errors() {
    let clf = load("clip-tiny");
    let none: [&str; 0] = [];
    let err = clf
        .encode_labels(&none, DEFAULT_HYPOTHESIS_TEMPLATE)
        .unwrap_err();
    assert!(err.to_string().contains("no labels given"), "{err}");
    let err = clf
        .encode_labels(&["cat", " "], DEFAULT_HYPOTHESIS_TEMPLATE)
        .unwrap_err();
    assert!(err.to_string().contains("label 1 is empty"), "{err}");
    let err = clf.encode_labels(&["cat"], "{} and {}").unwrap_err();
    assert!(err.to_string().contains("hypothesis template"), "{err}");

    // a checkpoint of another family
    let owl = model_dir("owlvit-tiny-p16");
    let err = Classifier::load(owl.to_str().unwrap(), &load_options())
        .err()
        .expect("an OWL-ViT checkpoint must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("OwlViTForObjectDetection") && msg.contains("CLIPModel"),
        "{msg}"
    );

    // the CLI: the same, as clean failures
    let dir = model_dir("clip-tiny");
    let image = image_path("chelsea.png");
    let base = [
        "classify",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
    ];
    let out = cli(&[&base[..], &["--label", ""]].concat());
    assert_fails_with(&out, &["cannot encode the labels", "label 0 is empty"]);
    let out = cli(&[&base[..], &["--label", "cat", "--template", "{x}"]].concat());
    assert_fails_with(&out, &["hypothesis template", "unknown field"]);
    // no --label at all is a usage error
    let out = cli(&base);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&[
        "classify",
        "--model",
        owl.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--label",
        "cat",
    ]);
    assert_fails_with(&out, &["cannot load CLIP model", "CLIPModel"]);
}
