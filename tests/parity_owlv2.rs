//! OWLv2 parity with transformers 5.17.0 on the tiny random checkpoints of
//! scripts/make_fixtures.py (`owlv2-tiny-p16`: safetensors + tokenizer.json, 64 px;
//! `owlv2-tiny-p16-bin`: pytorch_model.bin + vocab.json/merges.txt only, 48 px): tokenizer ids,
//! preprocessing through the detector, raw model outputs (objectness included),
//! post-processing (boxes scaled by the padded square's side) and the `detect` CLI end to end
//! on landscape, portrait, square and upscaled images.
//!
//! Tolerances, as OWL-ViT's (tests/parity_owlvit.rs):
//! - model outputs from the reference pixel values: logits and objectness logits 1e-4
//!   absolute, normalized boxes 1e-5, class and image embeddings 1e-4, text embeddings 1e-5;
//! - the CLI end to end (our preprocessing; it is the torchvision backend's to ~4e-6, see
//!   tests/owlv2_preprocess.rs): scores and objectness 1e-4, boxes 0.01 px.

mod common;

use std::path::Path;

use candle_core::Tensor;
use common::*;
use vlm_perception::pipeline::detect::{
    post_process_raw_detections, BoxScale, DetectionProcessor, RawDetections,
};
use vlm_perception::pipeline::tokenizer::Padding;
use vlm_perception::pipeline::{DetectParams, Detector, DetectorFamily};
use vlm_perception::vision::image_io::load_rgb;

const MODELS: &[&str] = &["owlv2-tiny-p16", "owlv2-tiny-p16-bin"];
const LOGIT_TOL: f32 = 1e-4;
const BOX_NORM_TOL: f32 = 1e-5;
const EMBED_TOL: f32 = 1e-4;
const TEXT_EMBED_TOL: f32 = 1e-5;
const SCORE_TOL: f32 = 1e-4;
const BOX_PX_TOL: f32 = 0.01;
/// Our pixels against transformers' default (torchvision) backend, normalised units.
const PIXEL_TOL: f32 = 1e-5;

fn stems(model: &str) -> Vec<String> {
    stems_at_least(model, 2)
}

fn queries(meta: &serde_json::Value) -> Vec<String> {
    strings(meta, "queries")
}

fn original_hw(m: &serde_json::Value) -> (u32, u32) {
    let v = |i: usize| m["original_size_hw"][i].as_u64().unwrap() as u32;
    (v(0), v(1))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The reference's raw outputs for one image, on the host.
fn reference_raw(model: &str, stem: &str) -> RawDetections {
    let dir = reference_dir(model, stem);
    let rows = |name: &str| -> Vec<Vec<f32>> {
        npy_f32(&dir.join(name))
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    RawDetections {
        logits: rows("logits.npy"),
        boxes: rows("pred_boxes.npy"),
        objectness_logits: Some(
            npy_f32(&dir.join("objectness_logits.npy"))
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap(),
        ),
    }
}

#[test]
fn checkpoints_are_recognised_as_owlv2_with_its_processor() {
    for model in MODELS {
        let det = load_detector(model);
        assert_eq!(det.family(), DetectorFamily::Owlv2, "{model}");
        assert!(det.has_objectness());
        assert!(
            matches!(det.processor(), DetectionProcessor::Owlv2(_)),
            "{model}: {:?}",
            det.processor()
        );
        assert_eq!(det.processor().box_scale(), BoxScale::PaddedSquare);
    }
    let owlvit = load_owlvit();
    assert_eq!(owlvit.family(), DetectorFamily::OwlVit);
    assert!(!owlvit.has_objectness());
    assert_eq!(owlvit.processor().box_scale(), BoxScale::ImageSize);
}

fn load_owlvit() -> Detector {
    Detector::load(
        model_dir("owlvit-tiny-p16").to_str().unwrap(),
        &load_options(),
    )
    .unwrap()
}

#[test]
fn query_ids_match_processor_for_both_tokenizer_sources() {
    // owlv2-tiny-p16 has tokenizer.json; owlv2-tiny-p16-bin only vocab.json + merges.txt (its
    // tiny vocabulary: EOS 769 is still the largest id, where the text tower pools).
    for model in MODELS {
        let det = load_detector(model);
        for stem in stems(model) {
            let dir = reference_dir(model, &stem);
            let qs = queries(&meta(model, &stem));
            let batch = det.tokenizer().encode(&qs, Padding::MaxLength).unwrap();
            assert_ids_match_processor(&batch, &dir, false, &format!("{model}/{stem}"));
            // Only the long last query is cut to the text tower's length.
            let truncated: Vec<bool> = (0..qs.len()).map(|i| i == qs.len() - 1).collect();
            assert_eq!(batch.truncated, truncated, "{model}/{stem}");
        }
    }
}

#[test]
fn detector_preprocessing_matches_the_torchvision_backend() {
    for model in MODELS {
        let det = load_detector(model);
        for stem in stems(model) {
            let m = meta(model, &stem);
            let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
            let ours = det.pixel_values(&img).unwrap();
            let reference = npy_f32(&reference_dir(model, &stem).join("pixel_values.npy"));
            let d = max_abs_diff(&ours, &reference);
            assert!(d <= PIXEL_TOL, "{model}/{stem}: pixel values differ by {d}");
        }
    }
}

#[test]
fn model_outputs_match_reference() {
    let mut worst = [0f32; 6];
    for model in MODELS {
        let det = load_detector(model);
        for stem in stems(model) {
            let dir = reference_dir(model, &stem);
            let queries = det.encode_queries(&queries(&meta(model, &stem))).unwrap();
            let text_ref = npy_f32(&dir.join("text_embeds.npy"));
            let text_ours = queries.embeds.reshape(text_ref.dims()).unwrap();
            let d = max_abs_diff(&text_ours, &text_ref);
            assert!(
                d < TEXT_EMBED_TOL,
                "{model}/{stem}: text_embeds differ by {d}"
            );
            worst[0] = worst[0].max(d);

            let pixel_values = npy_f32(&dir.join("pixel_values.npy"));
            let out = det.forward(&pixel_values, &queries).unwrap();
            let objectness = out
                .objectness_logits
                .as_ref()
                .expect("OWLv2 has objectness");
            for (k, (name, ours, tol)) in [
                ("logits", &out.logits, LOGIT_TOL),
                ("objectness_logits", objectness, LOGIT_TOL),
                ("pred_boxes", &out.pred_boxes, BOX_NORM_TOL),
                ("image_embeds", &out.image_embeds, EMBED_TOL),
                ("class_embeds", &out.class_embeds, EMBED_TOL),
            ]
            .into_iter()
            .enumerate()
            {
                let reference = npy_f32(&dir.join(format!("{name}.npy")));
                let d = max_abs_diff(ours, &reference);
                assert!(d < tol, "{model}/{stem}: {name} differs by {d} (tol {tol})");
                worst[k + 1] = worst[k + 1].max(d);
            }
        }
    }
    eprintln!(
        "max |ours - transformers|: text_embeds {:.1e}, logits {:.1e}, objectness_logits {:.1e}, \
         pred_boxes {:.1e}, image_embeds {:.1e}, class_embeds {:.1e}",
        worst[0], worst[1], worst[2], worst[3], worst[4], worst[5]
    );
}

fn thresholds(m: &serde_json::Value) -> [(&'static str, f32); 2] {
    [
        ("threshold_0", 0.0),
        (
            "threshold_median",
            m["thresholds"][1].as_f64().unwrap() as f32,
        ),
    ]
}

#[test]
fn post_processing_matches_reference_from_reference_outputs() {
    // transformers' Owlv2ImageProcessor.post_process_object_detection on its own outputs:
    // both axes scaled by max(H, W), no clamping.
    for model in MODELS {
        for stem in stems(model) {
            let m = meta(model, &stem);
            let (h, w) = original_hw(&m);
            assert_eq!(m["box_scale"].as_u64().unwrap() as u32, h.max(w));
            let raw = reference_raw(model, &stem);
            for (key, threshold) in thresholds(&m) {
                let params = DetectParams {
                    threshold,
                    nms_iou: 1.0,
                };
                let ours = post_process_raw_detections(
                    &raw,
                    &queries(&m),
                    &params,
                    0.0,
                    BoxScale::PaddedSquare,
                    w,
                    h,
                )
                .unwrap();
                let theirs = reference_detections(model, &stem, key);
                assert_eq!(ours.len(), theirs.len(), "{model}/{stem}/{key}");
                for (o, t) in ours.iter().zip(&theirs) {
                    assert_eq!(o.query_index, t.0, "{model}/{stem}/{key}");
                    assert!((o.score - t.1).abs() < 1e-6);
                    for (a, b) in o.bbox.to_array().iter().zip(t.2) {
                        assert!((a - b).abs() < 1e-3, "{model}/{stem}/{key}: box {a} vs {b}");
                    }
                    assert!(o.objectness.is_some());
                }
            }
        }
    }
}

fn cli_detections(model: &Path, image: &str, qs: &[String], extra: &[&str]) -> serde_json::Value {
    let image_path = image_path(image);
    let mut args = vec![
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image_path.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    for q in qs {
        args.extend(["--query", q.as_str()]);
    }
    cli_json(&args)
}

/// Per patch of the reference: (best query, sigmoid score, box in original pixels, objectness).
fn reference_patches(model: &str, stem: &str) -> Vec<(usize, f32, [f32; 4], f32)> {
    let m = meta(model, stem);
    let (h, w) = original_hw(&m);
    let side = h.max(w) as f32;
    let raw = reference_raw(model, stem);
    let objectness = raw.objectness_logits.as_ref().unwrap();
    raw.logits
        .iter()
        .zip(&raw.boxes)
        .zip(objectness)
        .map(|((row, b), &o)| {
            let (q, logit) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
            let [cx, cy, bw, bh] = [b[0], b[1], b[2], b[3]];
            let corners = [
                (cx - 0.5 * bw) * side,
                (cy - 0.5 * bh) * side,
                (cx + 0.5 * bw) * side,
                (cy + 0.5 * bh) * side,
            ];
            (q, sigmoid(logit), corners, sigmoid(o))
        })
        .collect()
}

fn bbox_of(d: &serde_json::Value) -> [f32; 4] {
    json_box(&d["bbox"])
}

#[test]
fn cli_detect_matches_reference_end_to_end() {
    // Every reference image through the CLI (our preprocessing): landscape 451x300, portrait
    // 107x181 and 20x64, square 64x64 (resized to 48), upscaled 31x33; both thresholds.
    let (mut ds_max, mut db_max, mut do_max) = (0f32, 0f32, 0f32);
    let mut orientations = [false; 2];
    for model in MODELS {
        for stem in stems(model) {
            let m = meta(model, &stem);
            let (h, w) = original_hw(&m);
            if w != h {
                orientations[usize::from(h > w)] = true;
            }
            let qs = queries(&m);
            let patches = reference_patches(model, &stem);
            for (key, threshold) in thresholds(&m) {
                let t = threshold.to_string();
                let out = cli_detections(
                    &model_dir(model),
                    m["image"].as_str().unwrap(),
                    &qs,
                    &["--threshold", &t],
                );
                assert_eq!(out["width"], w, "{model}/{stem}");
                assert_eq!(out["height"], h, "{model}/{stem}");
                let dets = out["detections"].as_array().unwrap();
                let theirs = reference_detections(model, &stem, key);
                assert_eq!(dets.len(), theirs.len(), "{model}/{stem}/{key}: count");
                for (d, t) in dets.iter().zip(&theirs) {
                    let qi = d["query_index"].as_u64().unwrap() as usize;
                    assert_eq!(qi, t.0, "{model}/{stem}/{key}: query index");
                    assert_eq!(d["label"].as_str().unwrap(), qs[qi]);
                    let score = d["score"].as_f64().unwrap() as f32;
                    let bbox = bbox_of(d);
                    ds_max = ds_max.max((score - t.1).abs());
                    db_max = db_max.max(box_max_diff(bbox, t.2));
                    // The objectness of the patch this box came from (the nearest reference
                    // box: patches' boxes are far apart compared with the tolerance).
                    let (_, _, _, o) = patches
                        .iter()
                        .min_by(|a, b| box_max_diff(a.2, bbox).total_cmp(&box_max_diff(b.2, bbox)))
                        .unwrap();
                    let ours = d["objectness"].as_f64().expect("objectness key") as f32;
                    do_max = do_max.max((ours - o).abs());
                }
            }
        }
    }
    eprintln!(
        "CLI vs transformers: scores {ds_max:.1e}, boxes {db_max:.1e} px, objectness {do_max:.1e}"
    );
    assert!(ds_max < SCORE_TOL, "score diff {ds_max}");
    assert!(db_max < BOX_PX_TOL, "box diff {db_max} px");
    assert!(do_max < SCORE_TOL, "objectness diff {do_max}");
    assert_eq!(orientations, [true, true], "landscape and portrait images");
}

#[test]
fn portrait_boxes_scale_by_the_padded_square() {
    // chelsea_20x64 (20 wide, 64 tall) is padded on the right to 64 x 64: x and y both scale by
    // 64, where OWL-ViT's scaling would take x by 20; boxes may reach into the padding.
    let model = "owlv2-tiny-p16-bin";
    let m = meta(model, "chelsea_20x64");
    let out = cli_detections(
        &model_dir(model),
        "chelsea_20x64.png",
        &queries(&m),
        &["--threshold", "0"],
    );
    let raw = reference_raw(model, "chelsea_20x64");
    let scaled = |b: &[f32], sx: f32, sy: f32| {
        [
            (b[0] - 0.5 * b[2]) * sx,
            (b[1] - 0.5 * b[3]) * sy,
            (b[0] + 0.5 * b[2]) * sx,
            (b[1] + 0.5 * b[3]) * sy,
        ]
    };
    let nearest = |bbox: [f32; 4], sx: f32, sy: f32| {
        raw.boxes
            .iter()
            .map(|b| box_max_diff(scaled(b, sx, sy), bbox))
            .fold(f32::MAX, f32::min)
    };
    let dets = out["detections"].as_array().unwrap();
    for d in dets {
        let bbox = bbox_of(d);
        assert!(nearest(bbox, 64.0, 64.0) < BOX_PX_TOL, "{bbox:?}");
        assert!(nearest(bbox, 20.0, 64.0) > 1.0, "{bbox:?}");
    }
    assert!(
        dets.iter().any(|d| bbox_of(d)[2] > 20.0),
        "no box reaches into the padding"
    );
}

#[test]
fn min_objectness_keeps_only_objects() {
    let model = "owlv2-tiny-p16";
    let m = meta(model, "chelsea");
    let qs = queries(&m);
    let all = cli_detections(&model_dir(model), "chelsea.png", &qs, &["--threshold", "0"]);
    let all = all["detections"].as_array().unwrap().clone();
    let mut objectness: Vec<f32> = all
        .iter()
        .map(|d| d["objectness"].as_f64().unwrap() as f32)
        .collect();
    objectness.sort_by(f32::total_cmp);
    // between the two middle values, so that some boxes go and some stay
    let mid = objectness.len() / 2;
    let cut = 0.5 * (objectness[mid - 1] + objectness[mid]);
    let cut_s = cut.to_string();
    let kept = cli_detections(
        &model_dir(model),
        "chelsea.png",
        &qs,
        &["--threshold", "0", "--min-objectness", &cut_s],
    );
    let kept = kept["detections"].as_array().unwrap();
    let want: Vec<&serde_json::Value> = all
        .iter()
        .filter(|d| d["objectness"].as_f64().unwrap() as f32 > cut)
        .collect();
    assert!(!kept.is_empty() && kept.len() < all.len());
    assert_eq!(kept.len(), want.len());
    for (k, w) in kept.iter().zip(want) {
        assert_eq!(k, w);
    }
}

#[test]
fn owlvit_json_has_no_objectness_and_refuses_min_objectness() {
    let model = model_dir("owlvit-tiny-p16");
    let qs = ["a cup".to_string()];
    let out = cli_detections(&model, "coffee.png", &qs, &["--threshold", "0"]);
    let dets = out["detections"].as_array().unwrap();
    assert!(!dets.is_empty());
    assert!(dets.iter().all(|d| d.get("objectness").is_none()), "{out}");

    let image = image_path("coffee.png");
    let run = cli(&[
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--query",
        "a cup",
        "--min-objectness",
        "0.3",
    ]);
    assert_fails_with(&run, &["--min-objectness", "OWLv2", "OWL-ViT"]);

    let run = cli(&[
        "detect",
        "--model",
        model_dir("owlv2-tiny-p16").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--query",
        "a cup",
        "--min-objectness",
        "1.5",
    ]);
    assert_fails_with(&run, &["--min-objectness", "1.5"]);
}

#[test]
fn table_output_has_an_objectness_column() {
    let image = image_path("chelsea.png");
    let out = cli(&[
        "detect",
        "--model",
        model_dir("owlv2-tiny-p16").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--query",
        "a photo of a cat",
        "--threshold",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("16 detection(s) in 451x300"), "{stdout}");
    assert!(stdout.contains("objectness"), "{stdout}");
}

#[test]
fn best_box_per_query_scales_by_the_padded_square() {
    // The planner's affordance on OWLv2: per query its own best box, in original pixels scaled
    // by max(H, W), with that box's objectness.
    for model in MODELS {
        let det = load_detector(model);
        for stem in stems(model) {
            let m = meta(model, &stem);
            let qs = queries(&m);
            let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
            let emb = det.encode_queries(&qs).unwrap();
            let ours = det.best_per_query(&img, &emb).unwrap().detections;
            assert_eq!(ours.len(), qs.len());
            let raw = reference_raw(model, &stem);
            let objectness = raw.objectness_logits.as_ref().unwrap();
            let side = img.width().max(img.height()) as f32;
            for (q, d) in ours.iter().enumerate() {
                let (i, best) = raw
                    .logits
                    .iter()
                    .map(|row| row[q])
                    .enumerate()
                    .fold((0, f32::MIN), |a, (i, v)| if v > a.1 { (i, v) } else { a });
                assert!(
                    (d.score - sigmoid(best)).abs() < SCORE_TOL,
                    "{model}/{stem} q{q}"
                );
                let o = d.objectness.expect("OWLv2 objectness");
                assert!((o - sigmoid(objectness[i])).abs() < SCORE_TOL);
                let b = &raw.boxes[i];
                let want = [
                    (b[0] - b[2] / 2.0) * side,
                    (b[1] - b[3] / 2.0) * side,
                    (b[0] + b[2] / 2.0) * side,
                    (b[1] + b[3] / 2.0) * side,
                ];
                let got = d.bbox.to_array();
                assert!(
                    box_max_diff(got, want) < BOX_PX_TOL,
                    "{model}/{stem} q{q}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

/// A copy of a fixture checkpoint in a temp dir, for breaking it.
fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

fn detect_cli(model: &Path) -> std::process::Output {
    let image = image_path("coffee_64x64.png");
    cli(&[
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--query",
        "a cup",
    ])
}

#[test]
fn config_without_architectures_is_recognised_by_model_type() {
    let dir = copy_model("owlv2-tiny-p16");
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("architectures");
    });
    let out = detect_cli(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_owlv2_checkpoints_fail_cleanly() {
    // A config that does not match the weights.
    let dir = copy_model("owlv2-tiny-p16");
    edit_config(dir.path(), |c| {
        c["vision_config"]["intermediate_size"] = 80.into();
    });
    assert_fails_with(
        &detect_cli(dir.path()),
        &["cannot load weights", "do not match config.json", "shape"],
    );

    // The same for the .bin checkpoint.
    let dir = copy_model("owlv2-tiny-p16-bin");
    edit_config(dir.path(), |c| {
        c["text_config"]["hidden_size"] = 24.into();
        c["projection_dim"] = 24.into();
    });
    assert_fails_with(
        &detect_cli(dir.path()),
        &["cannot load weights", "pytorch_model.bin"],
    );

    // OWLv2 weights under an OWL-ViT config: the `owlvit.` towers are missing.
    let dir = copy_model("owlv2-tiny-p16");
    edit_config(dir.path(), |c| {
        c["architectures"] = serde_json::json!(["OwlViTForObjectDetection"]);
        c["model_type"] = "owlvit".into();
    });
    assert_fails_with(&detect_cli(dir.path()), &["cannot load weights", "owlvit."]);

    // Weights without the objectness head.
    let dir = copy_model("owlv2-tiny-p16");
    let path = dir.path().join("model.safetensors");
    let tensors: Vec<(String, Tensor)> =
        candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("objectness_head."))
            .collect();
    candle_core::safetensors::save(&tensors.into_iter().collect(), &path).unwrap();
    assert_fails_with(
        &detect_cli(dir.path()),
        &["cannot load weights", "objectness_head"],
    );

    // A text-only (or vision-only, or contrastive) checkpoint is not a detector.
    for arch in ["Owlv2TextModel", "Owlv2Model"] {
        let dir = copy_model("owlv2-tiny-p16");
        edit_config(dir.path(), |c| {
            c["architectures"] = serde_json::json!([arch]);
        });
        assert_fails_with(
            &detect_cli(dir.path()),
            &[arch, "OwlViTForObjectDetection or Owlv2ForObjectDetection"],
        );
    }

    // A preprocessor that does not produce the vision tower's input size.
    let dir = copy_model("owlv2-tiny-p16");
    let path = dir.path().join("preprocessor_config.json");
    let mut pre: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    pre["size"] = serde_json::json!({"height": 96, "width": 96});
    std::fs::write(&path, pre.to_string()).unwrap();
    assert_fails_with(&detect_cli(dir.path()), &["96x96", "64x64"]);
}
