//! Image-guided (one-shot) detection parity with transformers 5.17.0
//! (`model.image_guided_detection` + `processor.post_process_image_guided_detection`) on the
//! tiny random checkpoints of scripts/make_fixtures.py: OWL-ViT (target coffee.png, query
//! coffee_64x64.png) and OWLv2 (target chelsea.png, query chelsea_107x181.png), references in
//! `tests/fixtures/reference/image_guided/<model>/<target>/`.
//!
//! Tolerances (stated once, used below):
//! - from the reference pixel values: the query box chosen exactly; logits and embeddings 1e-4
//!   absolute, normalized boxes 1e-5;
//! - post-processing on transformers' own outputs: the same boxes in the same order, alphas
//!   1e-6, boxes 1e-3 px (float rounding only); on our outputs: alphas 1e-4, boxes 0.01 px;
//! - the CLI end to end (our preprocessing): OWLv2 (its preprocessing is the torchvision
//!   backend's to ~4e-6, see tests/owlv2_preprocess.rs) alphas 1e-4, boxes 0.01 px; OWL-ViT's
//!   target is resized, where transformers' torchvision backend is 0.2-0.3% of values one
//!   uint8 level away from Pillow (and from ours), so as tests/parity_owlvit.rs
//!   `resized_images_stay_close_to_reference`: alphas 1.5e-3, boxes 0.6 px, and the same boxes
//!   kept.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use common::*;
use vlm_perception::models::owlv2::{Owlv2Config, Owlv2ForObjectDetection};
use vlm_perception::models::owlvit::{
    OwlVitConfig, OwlVitForObjectDetection, OwlVitImageGuidedObjectDetectionOutput,
};
use vlm_perception::pipeline::detect::{
    post_process_image_guided_detection, BoxScale, RawDetections,
};
use vlm_perception::pipeline::{Checkpoint, DetectParams, Detector, QueryEmbeddings, QueryKind};
use vlm_perception::vision::image_io::load_rgb;

/// (model, target image stem) of each reference.
const CASES: &[(&str, &str)] = &[("owlvit-tiny-p16", "coffee"), ("owlv2-tiny-p16", "chelsea")];
const LOGIT_TOL: f32 = 1e-4;
const EMBED_TOL: f32 = 1e-4;
const BOX_NORM_TOL: f32 = 1e-5;
const REF_SCORE_TOL: f32 = 1e-6;
const REF_BOX_PX_TOL: f32 = 1e-3;
const SCORE_TOL: f32 = 1e-4;
const BOX_PX_TOL: f32 = 0.01;
const RESIZED_SCORE_TOL: f32 = 1.5e-3;
const RESIZED_BOX_PX_TOL: f32 = 0.6;

fn case_dir(model: &str, stem: &str) -> PathBuf {
    fixtures()
        .join("reference")
        .join("image_guided")
        .join(model)
        .join(stem)
}

fn case_meta(model: &str, stem: &str) -> serde_json::Value {
    json(&case_dir(model, stem).join("meta.json"))
}

/// A tensor whose path meta.json gives relative to tests/fixtures.
fn meta_tensor(m: &serde_json::Value, key: &str) -> Tensor {
    npy_f32(&fixtures().join(m[key].as_str().unwrap()))
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.squeeze(0).unwrap().to_vec2().unwrap()
}

/// The reference's raw target outputs, on the host.
fn reference_raw(dir: &Path) -> RawDetections {
    RawDetections {
        logits: rows(&npy_f32(&dir.join("logits.npy"))),
        boxes: rows(&npy_f32(&dir.join("target_pred_boxes.npy"))),
        objectness_logits: None,
    }
}

fn target_hw(m: &serde_json::Value) -> (u32, u32) {
    let v = |i: usize| m["target_size_hw"][i].as_u64().unwrap() as u32;
    (v(0), v(1))
}

fn box_scale(model: &str) -> BoxScale {
    if model.starts_with("owlv2") {
        BoxScale::PaddedSquare
    } else {
        BoxScale::ImageSize
    }
}

/// One post-processing reference: its parameters and (alpha, box) in transformers' order.
struct PostProcessed {
    key: String,
    threshold: f32,
    nms_threshold: f32,
    detections: Vec<(f32, [f32; 4])>,
}

fn post_processed(model: &str, stem: &str) -> Vec<PostProcessed> {
    let pp = json(&case_dir(model, stem).join("post_processed.json"));
    let mut v: Vec<PostProcessed> = pp
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, entry)| {
            let results = entry["results"].as_array().unwrap();
            assert!(results.len() <= 1, "{key}: one target image");
            let detections = results
                .first()
                .map(|r| {
                    assert!(r["labels"].is_null());
                    r["scores"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .zip(r["boxes"].as_array().unwrap())
                        .map(|(s, b)| (s.as_f64().unwrap() as f32, json_box(b)))
                        .collect()
                })
                .unwrap_or_default();
            PostProcessed {
                key: key.clone(),
                threshold: entry["threshold"].as_f64().unwrap() as f32,
                nms_threshold: entry["nms_threshold"].as_f64().unwrap() as f32,
                detections,
            }
        })
        .collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    let m = case_meta(model, stem);
    let expected = 2 * m["nms_thresholds"].as_array().unwrap().len();
    assert_eq!(v.len(), expected, "{model}/{stem}: post-processing cases");
    v
}

/// Matches each reference detection with ours of the nearest box (one to one); returns (max
/// alpha difference, max box difference in px).
fn compare_matched(ours: &[(f32, [f32; 4])], theirs: &[(f32, [f32; 4])], what: &str) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: detection count");
    let mut used = vec![false; ours.len()];
    let (mut ds, mut db) = (0f32, 0f32);
    for (ts, tb) in theirs {
        let (j, d) = ours
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[*j])
            .map(|(j, (_, ob))| (j, box_max_diff(*ob, *tb)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        used[j] = true;
        ds = ds.max((ours[j].0 - ts).abs());
        db = db.max(d);
    }
    (ds, db)
}

/// Query embeddings of `embed_image_query`'s raw outputs, as the pipeline builds them.
fn image_queries(det: &Detector, query_pixel_values: &Tensor, label: &str) -> QueryEmbeddings {
    let out = det.embed_query_pixel_values(query_pixel_values).unwrap();
    QueryEmbeddings {
        texts: vec![label.to_string()],
        embeds: out.query_embeds,
        truncated: vec![false],
        kind: QueryKind::Image {
            best_box_indices: out.best_box_indices,
        },
    }
}

#[test]
fn query_box_and_query_embedding_match_reference() {
    for &(model, stem) in CASES {
        let det = load_detector(model);
        let dir = case_dir(model, stem);
        let m = case_meta(model, stem);
        let out = det
            .embed_query_pixel_values(&meta_tensor(&m, "query_pixel_values"))
            .unwrap();
        let best = m["best_box_index"].as_u64().unwrap() as usize;
        assert_eq!(out.best_box_indices, [best], "{model}/{stem}: query box");
        // query_embeds.npy is [1, 1, d]: one query per target.
        let reference = npy_f32(&dir.join("query_embeds.npy"));
        let ours = out.query_embeds.reshape(reference.dims()).unwrap();
        for (name, ours, reference, tol) in [
            ("query_embeds", &ours, reference.clone(), EMBED_TOL),
            (
                "query_pred_boxes",
                &out.query_pred_boxes,
                npy_f32(&dir.join("query_pred_boxes.npy")),
                BOX_NORM_TOL,
            ),
            (
                "query_image_embeds",
                &out.query_image_embeds,
                npy_f32(&dir.join("query_image_embeds.npy")),
                EMBED_TOL,
            ),
        ] {
            let d = max_abs_diff(ours, &reference);
            eprintln!("{model}/{stem}: {name} max diff {d:.2e}");
            assert!(d < tol, "{model}/{stem}: {name} differs by {d} (tol {tol})");
        }
    }
}

#[test]
fn target_outputs_match_reference() {
    for &(model, stem) in CASES {
        let det = load_detector(model);
        let dir = case_dir(model, stem);
        let m = case_meta(model, stem);
        let q = image_queries(&det, &meta_tensor(&m, "query_pixel_values"), "query");
        let out = det.forward(&meta_tensor(&m, "pixel_values"), &q).unwrap();
        for (name, ours, file, tol) in [
            ("logits", &out.logits, "logits.npy", LOGIT_TOL),
            (
                "target_pred_boxes",
                &out.pred_boxes,
                "target_pred_boxes.npy",
                BOX_NORM_TOL,
            ),
            (
                "image_embeds",
                &out.image_embeds,
                "image_embeds.npy",
                EMBED_TOL,
            ),
            (
                "class_embeds",
                &out.class_embeds,
                "class_embeds.npy",
                EMBED_TOL,
            ),
        ] {
            let d = max_abs_diff(ours, &npy_f32(&dir.join(file)));
            eprintln!("{model}/{stem}: {name} max diff {d:.2e}");
            assert!(d < tol, "{model}/{stem}: {name} differs by {d} (tol {tol})");
        }
    }
}

/// transformers' `image_guided_detection` of the model itself (one query image per target).
fn model_image_guided(
    model: &str,
    pv: &Tensor,
    qpv: &Tensor,
) -> OwlVitImageGuidedObjectDetectionOutput {
    let ckpt = Checkpoint::resolve(model_dir(model).to_str().unwrap()).unwrap();
    let vb = ckpt.model_vars(&load_options()).unwrap();
    if model.starts_with("owlv2") {
        let cfg: Owlv2Config = ckpt.config().unwrap();
        Owlv2ForObjectDetection::new(vb, &cfg, model)
            .unwrap()
            .image_guided_detection(pv, qpv)
            .unwrap()
    } else {
        let cfg: OwlVitConfig = ckpt.config().unwrap();
        OwlVitForObjectDetection::new(vb, &cfg, model)
            .unwrap()
            .image_guided_detection(pv, qpv)
            .unwrap()
    }
}

#[test]
fn model_image_guided_detection_matches_reference() {
    for &(model, stem) in CASES {
        let dir = case_dir(model, stem);
        let m = case_meta(model, stem);
        let out = model_image_guided(
            model,
            &meta_tensor(&m, "pixel_values"),
            &meta_tensor(&m, "query_pixel_values"),
        );
        let best = m["best_box_index"].as_u64().unwrap() as usize;
        assert_eq!(out.best_box_indices, [best], "{model}/{stem}");
        let query_embeds = out.query_embeds.unsqueeze(1).unwrap();
        for (name, ours, tol) in [
            ("logits", &out.logits, LOGIT_TOL),
            ("target_pred_boxes", &out.target_pred_boxes, BOX_NORM_TOL),
            ("query_pred_boxes", &out.query_pred_boxes, BOX_NORM_TOL),
            ("image_embeds", &out.image_embeds, EMBED_TOL),
            ("query_image_embeds", &out.query_image_embeds, EMBED_TOL),
            ("class_embeds", &out.class_embeds, EMBED_TOL),
            ("query_embeds", &query_embeds, EMBED_TOL),
        ] {
            let d = max_abs_diff(ours, &npy_f32(&dir.join(format!("{name}.npy"))));
            assert!(d < tol, "{model}/{stem}: {name} differs by {d} (tol {tol})");
        }
    }
}

#[test]
fn image_guided_detection_refuses_mismatched_batches() {
    let (model, stem) = CASES[0];
    let m = case_meta(model, stem);
    let pv = meta_tensor(&m, "pixel_values");
    let two = Tensor::cat(&[&pv, &pv], 0).unwrap();
    let ckpt = Checkpoint::resolve(model_dir(model).to_str().unwrap()).unwrap();
    let cfg: OwlVitConfig = ckpt.config().unwrap();
    let det = OwlVitForObjectDetection::new(ckpt.model_vars(&load_options()).unwrap(), &cfg, model)
        .unwrap();
    let err = det.image_guided_detection(&two, &pv).unwrap_err();
    assert!(
        err.to_string().contains("one query image per target"),
        "{err}"
    );
}

#[test]
fn post_processing_of_reference_outputs_matches_reference() {
    // Our post-processing on transformers' own logits and boxes: the same boxes in the same
    // (patch) order, with NMS on and off, at both thresholds.
    for &(model, stem) in CASES {
        let dir = case_dir(model, stem);
        let (h, w) = target_hw(&case_meta(model, stem));
        let raw = reference_raw(&dir);
        for case in post_processed(model, stem) {
            let ours = post_process_image_guided_detection(
                &raw,
                &["query".to_string()],
                case.threshold,
                case.nms_threshold,
                box_scale(model),
                w,
                h,
            )
            .unwrap();
            let what = format!("{model}/{stem}/{}", case.key);
            assert_eq!(ours.len(), case.detections.len(), "{what}: count");
            for (o, (s, b)) in ours.iter().zip(&case.detections) {
                assert_eq!((o.query_index, o.label.as_str()), (0, "query"));
                assert!(o.objectness.is_none());
                assert!(
                    (o.score - s).abs() < REF_SCORE_TOL,
                    "{what}: {} vs {s}",
                    o.score
                );
                let d = box_max_diff(o.bbox.to_array(), *b);
                assert!(d < REF_BOX_PX_TOL, "{what}: box {:?} vs {b:?}", o.bbox);
            }
        }
    }
}

#[test]
fn post_processing_of_our_outputs_matches_reference() {
    // The whole pipeline after preprocessing (our model outputs on the reference pixels).
    for &(model, stem) in CASES {
        let det = load_detector(model);
        let m = case_meta(model, stem);
        let (h, w) = target_hw(&m);
        let q = image_queries(&det, &meta_tensor(&m, "query_pixel_values"), "query");
        let out = det.forward(&meta_tensor(&m, "pixel_values"), &q).unwrap();
        let raw = RawDetections {
            logits: rows(&out.logits),
            boxes: rows(&out.pred_boxes),
            objectness_logits: None,
        };
        let (mut ds, mut db) = (0f32, 0f32);
        for case in post_processed(model, stem) {
            let ours = post_process_image_guided_detection(
                &raw,
                &q.texts,
                case.threshold,
                case.nms_threshold,
                box_scale(model),
                w,
                h,
            )
            .unwrap();
            let what = format!("{model}/{stem}/{}", case.key);
            assert_eq!(ours.len(), case.detections.len(), "{what}: count");
            for (o, (s, b)) in ours.iter().zip(&case.detections) {
                ds = ds.max((o.score - s).abs());
                db = db.max(box_max_diff(o.bbox.to_array(), *b));
            }
        }
        eprintln!("{model}/{stem}: post-processed alphas within {ds:.2e}, boxes {db:.2e} px");
        assert!(ds < SCORE_TOL, "{model}/{stem}: alpha diff {ds}");
        assert!(db < BOX_PX_TOL, "{model}/{stem}: box diff {db} px");
    }
}

fn cli_image_guided(
    model: &str,
    target: &str,
    queries: &[&str],
    extra: &[&str],
) -> serde_json::Value {
    let model_path = model_dir(model);
    let target = image_path(target);
    let queries: Vec<PathBuf> = queries.iter().map(|q| image_path(q)).collect();
    let mut args = vec![
        "detect",
        "--model",
        model_path.to_str().unwrap(),
        "--image",
        target.to_str().unwrap(),
        "--json",
    ];
    for q in &queries {
        args.extend(["--query-image", q.to_str().unwrap()]);
    }
    args.extend(extra);
    cli_json(&args)
}

/// (alpha, bbox) of CLI JSON detections, checking labels and order.
fn cli_detections(out: &serde_json::Value, labels: &[&str]) -> Vec<(usize, f32, [f32; 4])> {
    let dets: Vec<(usize, f32, [f32; 4])> = out["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let qi = d["query_index"].as_u64().unwrap() as usize;
            assert_eq!(d["label"].as_str().unwrap(), labels[qi]);
            assert!(
                d.get("objectness").is_none(),
                "image-guided has no objectness"
            );
            (
                qi,
                d["score"].as_f64().unwrap() as f32,
                json_box(&d["bbox"]),
            )
        })
        .collect();
    assert!(
        dets.windows(2).all(|p| p[0].1 >= p[1].1),
        "detections are not sorted by score"
    );
    dets
}

#[test]
fn cli_matches_reference_end_to_end() {
    for &(model, stem) in CASES {
        let m = case_meta(model, stem);
        let target = m["target_image"].as_str().unwrap();
        let query = m["query_image"].as_str().unwrap();
        let resized = model.starts_with("owlvit");
        let (score_tol, box_tol) = if resized {
            (RESIZED_SCORE_TOL, RESIZED_BOX_PX_TOL)
        } else {
            (SCORE_TOL, BOX_PX_TOL)
        };
        let (mut ds, mut db) = (0f32, 0f32);
        for case in post_processed(model, stem) {
            let (t, n) = (case.threshold.to_string(), case.nms_threshold.to_string());
            let out = cli_image_guided(
                model,
                target,
                &[query],
                &["--threshold", &t, "--nms-iou", &n],
            );
            let (h, w) = target_hw(&m);
            assert_eq!(
                (out["width"].as_u64(), out["height"].as_u64()),
                (Some(w.into()), Some(h.into()))
            );
            let ours: Vec<(f32, [f32; 4])> = cli_detections(&out, &[query])
                .into_iter()
                .map(|(_, s, b)| (s, b))
                .collect();
            let what = format!("{model}/{stem}/{}", case.key);
            let (s, b) = compare_matched(&ours, &case.detections, &what);
            ds = ds.max(s);
            db = db.max(b);
        }
        eprintln!("{model}/{stem}: CLI alphas within {ds:.2e}, boxes {db:.3e} px");
        assert!(ds < score_tol, "{model}/{stem}: alpha diff {ds}");
        assert!(db < box_tol, "{model}/{stem}: box diff {db} px");
    }
}

#[test]
fn cli_defaults_are_transformers_image_guided_defaults() {
    // No --threshold / --nms-iou: threshold 0 and NMS at 0.3, not the text queries' defaults.
    for &(model, stem) in CASES {
        let m = case_meta(model, stem);
        let query = m["query_image"].as_str().unwrap();
        let out = cli_image_guided(model, m["target_image"].as_str().unwrap(), &[query], &[]);
        let ours: Vec<(f32, [f32; 4])> = cli_detections(&out, &[query])
            .into_iter()
            .map(|(_, s, b)| (s, b))
            .collect();
        let cases = post_processed(model, stem);
        let reference = cases
            .iter()
            .find(|c| c.threshold == 0.0 && c.nms_threshold == 0.3)
            .unwrap();
        let (ds, db) = compare_matched(&ours, &reference.detections, model);
        assert!(
            ds < RESIZED_SCORE_TOL && db < RESIZED_BOX_PX_TOL,
            "{model}: {ds} {db}"
        );
    }
}

#[test]
fn several_query_images_are_one_query_each() {
    // Two query images: logits get one column per image, each equal to that image alone, and
    // a box takes the label of the image scoring it best.
    let model = "owlvit-tiny-p16";
    let det = load_detector(model);
    let target = load_rgb(&image_path("coffee.png")).unwrap();
    let images = ["coffee_64x64.png", "chelsea_107x181.png"];
    let decoded: Vec<_> = images
        .iter()
        .map(|i| load_rgb(&image_path(i)).unwrap())
        .collect();
    let both = det.encode_query_images(&decoded, &images).unwrap();
    assert_eq!(both.embeds.dims()[0], 2);
    let QueryKind::Image { best_box_indices } = &both.kind else {
        panic!("not image queries: {:?}", both.kind);
    };
    assert_eq!(best_box_indices.len(), 2);
    let pv = det.pixel_values(&target).unwrap();
    let logits = rows(&det.forward(&pv, &both).unwrap().logits);
    for (i, img) in decoded.iter().enumerate() {
        let one = det
            .encode_query_images(std::slice::from_ref(img), &[images[i]])
            .unwrap();
        let single = rows(&det.forward(&pv, &one).unwrap().logits);
        for (row, s) in logits.iter().zip(&single) {
            assert!(
                (row[i] - s[0]).abs() < 1e-5,
                "query {i}: {} vs {}",
                row[i],
                s[0]
            );
        }
    }
    let result = det
        .detect_image_guided(&target, &both, &DetectParams::image_guided())
        .unwrap();
    assert!(!result.detections.is_empty());
    for d in &result.detections {
        assert_eq!(d.label, images[d.query_index]);
    }
    // The CLI labels them by file name.
    let out = cli_image_guided(model, "coffee.png", &images, &["--threshold", "0.5"]);
    let dets = cli_detections(&out, &images);
    assert!(!dets.is_empty());
}

#[test]
fn query_image_embeddings_are_cached_by_label_and_content() {
    let det = load_detector("owlv2-tiny-p16");
    let img = load_rgb(&image_path("chelsea_107x181.png")).unwrap();
    let a = det
        .query_images(std::slice::from_ref(&img), &["cat"])
        .unwrap();
    let b = det
        .query_images(std::slice::from_ref(&img), &["cat"])
        .unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "same images must hit the cache"
    );
    let c = det
        .query_images(std::slice::from_ref(&img), &["a cat"])
        .unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c), "a new label re-encodes");
    let mut changed = img.clone();
    changed.get_pixel_mut(0, 0).0[0] ^= 1;
    let d = det.query_images(&[changed], &["a cat"]).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&c, &d), "new pixels re-encode");
    // The cached embedding is the uncached one.
    let fresh = det.encode_query_images(&[img], &["cat"]).unwrap();
    assert_eq!(max_abs_diff(&a.embeds, &fresh.embeds), 0.0);
}

#[test]
fn library_refuses_bad_query_lists() {
    let det = load_detector("owlvit-tiny-p16");
    let img = load_rgb(&image_path("coffee_64x64.png")).unwrap();
    let none: [&str; 0] = [];
    let err = det.encode_query_images(&[], &none).unwrap_err();
    assert!(
        err.to_string().contains("no query image labels given"),
        "{err}"
    );
    let err = det
        .encode_query_images(std::slice::from_ref(&img), &["a", "b"])
        .unwrap_err();
    assert!(
        err.to_string().contains("1 query images but 2 labels"),
        "{err}"
    );
    let err = det
        .encode_query_images(&[image::RgbImage::new(0, 0)], &["blank"])
        .unwrap_err();
    assert!(err.to_string().contains("blank"), "{err}");
}

// ---- CLI errors: exit 1 with a message naming the problem (2 for usage), never a panic.

fn detect_with(extra: &[&str]) -> std::process::Output {
    let model = model_dir("owlvit-tiny-p16");
    let image = image_path("coffee.png");
    let mut args = vec![
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
    ];
    args.extend(extra);
    cli(&args)
}

fn assert_usage_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

#[test]
fn bad_query_images_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let path = |name: &str| p(name).to_str().unwrap().to_string();

    assert_fails_with(
        &detect_with(&["--query-image", &path("missing.png")]),
        &["missing.png"],
    );
    std::fs::write(p("empty.png"), b"").unwrap();
    assert_fails_with(
        &detect_with(&["--query-image", &path("empty.png")]),
        &["--query-image", "empty.png", "empty file"],
    );
    std::fs::write(p("garbage.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    assert_fails_with(
        &detect_with(&["--query-image", &path("garbage.png")]),
        &["garbage.png"],
    );
    image::RgbImage::new(20_000, 1).save(p("wide.png")).unwrap();
    assert_fails_with(
        &detect_with(&["--query-image", &path("wide.png")]),
        &["wide.png", "20000"],
    );
    // One bad image among good ones is named.
    let good = image_path("coffee_64x64.png");
    assert_fails_with(
        &detect_with(&[
            "--query-image",
            good.to_str().unwrap(),
            "--query-image",
            &path("garbage.png"),
        ]),
        &["garbage.png"],
    );
}

#[test]
fn query_kinds_are_exclusive_and_required() {
    let q = image_path("coffee_64x64.png");
    let q = q.to_str().unwrap();
    assert_usage_error(
        &detect_with(&["--query", "a cup", "--query-image", q]),
        "cannot be used with",
    );
    assert_usage_error(&detect_with(&[]), "--query-image");
    // Objectness is not part of image-guided detection.
    assert_usage_error(
        &detect_with(&["--query-image", q, "--min-objectness", "0.5"]),
        "--min-objectness",
    );
    assert_fails_with(
        &detect_with(&["--query-image", q, "--threshold", "2"]),
        &["--threshold"],
    );
    assert_fails_with(
        &detect_with(&["--query-image", q, "--nms-iou", "0"]),
        &["--nms-iou"],
    );
}
