//! Batched vision passes (`Detector::detect_batch`, `Segmenter::segment_batch`) against the
//! single-image calls on the tiny fixture checkpoints: batches of 1, 2 and 3 images of
//! different sizes (a crop among them), each image with its own queries or prompts, parameters
//! and mode. Every batched result must equal its single-image call: the same detections in
//! the same order (labels and query indices exactly; scores, objectness and boxes, the latter
//! relative to the image's longer side, within [`TOL`]), the same CLIPSeg logits and mask
//! probabilities within [`TOL`] relative to the largest logit, identical masks, and the same
//! errors for invalid inputs.

mod common;

use common::*;
use image::RgbImage;
use vlm_perception::models::clipseg::MAX_PROMPTS_PER_DECODE;
use vlm_perception::pipeline::{
    DetectInput, DetectMode, DetectParams, DetectionResult, Detector, PromptEmbeddings,
    QueryEmbeddings, SegmentInput, SegmentParams, SegmentationResult, Segmenter,
};
use vlm_perception::vision::image_io::load_rgb;

/// Batched against single-image results, absolute (boxes: in units of the image's longer
/// side; logits: relative to the largest one).
const TOL: f32 = 1e-5;
const OWLVIT: &str = "owlvit-tiny-p16";
const OWLV2: &str = "owlv2-tiny-p16";
const CLIPSEG_MODELS: &[&str] = &["clipseg-tiny-rd16", "clipseg-tiny-complex"];

/// Three images of different sizes and aspect ratios: landscape, portrait, and a crop.
fn images() -> Vec<RgbImage> {
    let coffee = load_rgb(&image_path("coffee.png")).unwrap();
    let crop = image::imageops::crop_imm(&coffee, 130, 40, 211, 157).to_image();
    vec![
        load_rgb(&image_path("chelsea.png")).unwrap(),
        load_rgb(&image_path("chelsea_107x181.png")).unwrap(),
        crop,
    ]
}

/// Detection parameters that keep a handful of boxes on the tiny models.
fn params() -> DetectParams {
    DetectParams {
        threshold: 0.3,
        nms_iou: 0.5,
    }
}

/// The largest difference between a batched and a single-image result; panics when they
/// differ in anything but float rounding.
fn detection_diff(batched: &DetectionResult, single: &DetectionResult, what: &str) -> f32 {
    assert_eq!(
        (batched.width, batched.height),
        (single.width, single.height),
        "{what}: size"
    );
    assert_eq!(
        batched.detections.len(),
        single.detections.len(),
        "{what}: detection count"
    );
    let side = batched.width.max(batched.height) as f32;
    let mut max = 0.0f32;
    for (k, (b, s)) in batched
        .detections
        .iter()
        .zip(&single.detections)
        .enumerate()
    {
        assert_eq!(
            (b.query_index, &b.label),
            (s.query_index, &s.label),
            "{what}: detection {k}"
        );
        assert_eq!(
            b.objectness.is_some(),
            s.objectness.is_some(),
            "{what}: detection {k} objectness"
        );
        let objectness = (b.objectness.unwrap_or(0.0) - s.objectness.unwrap_or(0.0)).abs();
        let boxes = box_max_diff(b.bbox.to_array(), s.bbox.to_array()) / side;
        let d = (b.score - s.score).abs().max(objectness).max(boxes);
        assert!(
            d <= TOL,
            "{what}: detection {k} differs by {d}: {b:?} vs {s:?}"
        );
        max = max.max(d);
    }
    max
}

/// The single-image call an input stands for.
fn single(det: &Detector, input: &DetectInput<'_>) -> vlm_perception::Result<DetectionResult> {
    match input.mode {
        DetectMode::Text { min_objectness } => {
            det.detect_with_min_objectness(input.image, input.queries, input.params, min_objectness)
        }
        DetectMode::ImageGuided => {
            det.detect_image_guided(input.image, input.queries, input.params)
        }
    }
}

/// Runs `inputs` as one batch and every one alone; compares them and returns the largest
/// difference and how many detections were compared.
fn check_batch(det: &Detector, inputs: &[DetectInput<'_>], what: &str) -> (f32, usize) {
    let batched = det.detect_batch(inputs).unwrap();
    assert_eq!(batched.len(), inputs.len(), "{what}: one result per image");
    let forward = batched[0].timings.forward;
    let mut max = 0.0f32;
    let mut count = 0;
    for (i, (input, b)) in inputs.iter().zip(&batched).enumerate() {
        assert_eq!(
            b.timings.forward, forward,
            "{what}: the batch's forward time"
        );
        let s = single(det, input).unwrap();
        max = max.max(detection_diff(b, &s, &format!("{what}, image {i}")));
        count += s.detections.len();
    }
    (max, count)
}

/// Every prefix of the three images (batches of 1, 2 and 3), each image with its own mode.
fn check_prefixes(
    det: &Detector,
    images: &[RgbImage],
    queries: &[&QueryEmbeddings],
    params: &[DetectParams],
    modes: &[DetectMode],
    what: &str,
) -> (f32, usize) {
    let inputs: Vec<DetectInput<'_>> = (0..images.len())
        .map(|i| DetectInput {
            image: &images[i],
            queries: queries[i],
            params: &params[i],
            mode: modes[i],
        })
        .collect();
    let mut max = 0.0f32;
    let mut count = 0;
    for n in 1..=inputs.len() {
        let (d, c) = check_batch(det, &inputs[..n], &format!("{what}, batch of {n}"));
        max = max.max(d);
        count += c;
    }
    eprintln!("{what}: max |batched - single| = {max:.2e} over {count} detections");
    (max, count)
}

#[test]
fn text_detection_batches_equal_single_calls() {
    let images = images();
    for model in [OWLVIT, OWLV2] {
        let det = load_detector(model);
        let queries = det
            .queries(&["a cat", "a remote control", "a cup"])
            .unwrap();
        let q = [&*queries; 3];
        let text = [DetectMode::Text {
            min_objectness: 0.0,
        }; 3];
        let (_, count) = check_prefixes(&det, &images, &q, &[params(); 3], &text, model);
        assert!(count > 0, "{model}: no detections compared");
        // The images give different detections: a batch returning one image's result for
        // another would not pass.
        let p = params();
        let results = det
            .detect_batch(&[0, 1].map(|i| DetectInput {
                image: &images[i],
                queries: &queries,
                params: &p,
                mode: text[i],
            }))
            .unwrap();
        assert_ne!(
            results[0].detections, results[1].detections,
            "{model}: two images, the same detections"
        );
    }
}

#[test]
fn owlv2_min_objectness_and_per_image_params_batch_like_single_calls() {
    let images = images();
    let det = load_detector(OWLV2);
    let queries = det
        .queries(&["a cat", "a remote control", "a cup"])
        .unwrap();
    let q = [&*queries; 3];
    let all = det.detect(&images[0], &queries, &params()).unwrap();
    let objectness: Vec<f32> = all.detections.iter().filter_map(|d| d.objectness).collect();
    assert!(objectness.len() > 1, "too few detections to gate");
    // A gate between the lowest and highest objectness drops some boxes but not all.
    let gate = (objectness.iter().copied().fold(1.0, f32::min)
        + objectness.iter().copied().fold(0.0, f32::max))
        / 2.0;
    let gated = det
        .detect_with_min_objectness(&images[0], &queries, &params(), gate)
        .unwrap();
    assert!(
        !gated.detections.is_empty() && gated.detections.len() < all.detections.len(),
        "gate {gate}: {} of {}",
        gated.detections.len(),
        all.detections.len()
    );
    let per_image = [
        params(),
        DetectParams {
            threshold: 0.2,
            nms_iou: 1.0,
        },
        DetectParams {
            threshold: 0.4,
            nms_iou: 0.3,
        },
    ];
    let modes = [
        DetectMode::Text {
            min_objectness: gate,
        },
        DetectMode::Text {
            min_objectness: 0.0,
        },
        DetectMode::Text {
            min_objectness: gate,
        },
    ];
    let (_, count) = check_prefixes(&det, &images, &q, &per_image, &modes, "OWLv2 gated");
    assert!(count > 0);
}

#[test]
fn image_guided_batches_equal_single_calls() {
    let images = images();
    for model in [OWLVIT, OWLV2] {
        let det = load_detector(model);
        let query_images = [
            load_rgb(&image_path("coffee_64x64.png")).unwrap(),
            load_rgb(&image_path("chelsea_107x181.png")).unwrap(),
        ];
        let image_queries = det
            .query_images(&query_images, &["coffee", "chelsea"])
            .unwrap();
        let text_queries = det.queries(&["a cat", "a cup"]).unwrap();
        let guided = DetectParams::image_guided();
        // All image-guided; then image-guided mixed with text detection in one batch.
        let (_, count) = check_prefixes(
            &det,
            &images,
            &[&*image_queries; 3],
            &[guided; 3],
            &[DetectMode::ImageGuided; 3],
            &format!("{model} image-guided"),
        );
        assert!(count > 0, "{model}: no detections compared");
        let (_, count) = check_prefixes(
            &det,
            &images,
            &[&*image_queries, &*text_queries, &*image_queries],
            &[guided, params(), guided],
            &[
                DetectMode::ImageGuided,
                DetectMode::Text {
                    min_objectness: 0.0,
                },
                DetectMode::ImageGuided,
            ],
            &format!("{model} image-guided and text"),
        );
        assert!(count > 0);
    }
}

#[test]
fn an_image_with_its_own_vocabulary_batches_like_single_calls() {
    // Images 0 and 2 share one vocabulary (one class-head pass over rows 0 and 2), image 1
    // has another of a different length; then every image its own, and a vocabulary shared
    // through a clone of its embeddings.
    let images = images();
    for model in [OWLVIT, OWLV2] {
        let det = load_detector(model);
        let shared = det
            .queries(&["a cat", "a remote control", "a cup"])
            .unwrap();
        let own = det.encode_queries(&["a dog", "a sofa"]).unwrap();
        let third = det.encode_queries(&["a photo of a mug"]).unwrap();
        let cloned = (*shared).clone();
        let text = [DetectMode::Text {
            min_objectness: 0.0,
        }; 3];
        let cases: [(&str, [&QueryEmbeddings; 3]); 3] = [
            ("shared around its own", [&shared, &own, &shared]),
            ("each its own", [&shared, &own, &third]),
            ("shared by a clone", [&own, &shared, &cloned]),
        ];
        for (case, q) in cases {
            let what = format!("{model}, {case}");
            let (_, count) = check_prefixes(&det, &images, &q, &[params(); 3], &text, &what);
            assert!(count > 0, "{what}: no detections compared");
        }
        // Image 1's vocabulary shows in its labels only.
        let p = params();
        let results = det
            .detect_batch(&[0, 1, 2].map(|i| DetectInput {
                image: &images[i],
                queries: [&*shared, &own, &*shared][i],
                params: &p,
                mode: text[i],
            }))
            .unwrap();
        for (i, r) in results.iter().enumerate() {
            let labels = if i == 1 { &own.texts } else { &shared.texts };
            for d in &r.detections {
                assert_eq!(&labels[d.query_index], &d.label, "{model}: image {i}");
            }
        }
    }
}

#[test]
fn invalid_inputs_fail_as_single_calls_do() {
    let images = images();
    let owlvit = load_detector(OWLVIT);
    let owlv2 = load_detector(OWLV2);
    assert!(owlvit.detect_batch(&[]).unwrap().is_empty());
    let queries = owlv2.queries(&["a cat"]).unwrap();
    let empty = QueryEmbeddings {
        texts: Vec::new(),
        embeds: queries.embeds.narrow(0, 0, 0).unwrap(),
        truncated: Vec::new(),
        kind: queries.kind.clone(),
    };
    let text = |min_objectness| DetectMode::Text { min_objectness };
    let nan = DetectParams {
        threshold: f32::NAN,
        nms_iou: 0.3,
    };
    let cases: [(&Detector, &QueryEmbeddings, DetectParams, DetectMode); 5] = [
        (&owlv2, &queries, params(), text(1.5)),
        (&owlvit, &queries, params(), text(0.5)),
        (
            &owlv2,
            &empty,
            DetectParams::image_guided(),
            DetectMode::ImageGuided,
        ),
        (&owlv2, &queries, nan, DetectMode::ImageGuided),
        (&owlv2, &empty, params(), text(0.0)),
    ];
    for (k, (det, q, p, mode)) in cases.iter().enumerate() {
        let bad = DetectInput {
            image: &images[1],
            queries: q,
            params: p,
            mode: *mode,
        };
        let good = DetectInput {
            image: &images[0],
            queries: &queries,
            params: &params(),
            mode: text(0.0),
        };
        let alone = single(det, &bad);
        // Alone, and in a batch after a valid image.
        for (inputs, what) in [(vec![bad], "alone"), (vec![good, bad], "second")] {
            let batched = det.detect_batch(&inputs);
            match (&alone, batched) {
                (Err(e), Err(b)) => assert_eq!(e.to_string(), b.to_string(), "case {k} {what}"),
                (Ok(s), Ok(b)) => {
                    detection_diff(b.last().unwrap(), s, &format!("case {k} {what}"));
                }
                (a, b) => panic!("case {k} {what}: single {a:?}, batched {b:?}"),
            }
        }
    }
}

/// The largest difference between a batched and a single-image segmentation, relative to the
/// largest logit; panics when they differ in anything but float rounding.
fn segmentation_diff(batched: &SegmentationResult, single: &SegmentationResult, what: &str) -> f32 {
    assert_eq!(
        (batched.width, batched.height),
        (single.width, single.height),
        "{what}: size"
    );
    let (b, s) = (&batched.logits, &single.logits);
    assert_eq!(
        (b.prompts, b.height, b.width),
        (s.prompts, s.height, s.width),
        "{what}: logits shape"
    );
    let scale = s.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let logits = max_diff(&b.data, &s.data) / scale;
    assert_eq!(batched.masks.len(), single.masks.len(), "{what}: masks");
    let mut probabilities = 0.0f32;
    for (bm, sm) in batched.masks.iter().zip(&single.masks) {
        assert_eq!(
            (bm.prompt_index, &bm.label),
            (sm.prompt_index, &sm.label),
            "{what}"
        );
        assert_eq!(bm.mask, sm.mask, "{what}: mask of {}", sm.label);
        probabilities = probabilities.max(max_diff(&bm.probabilities, &sm.probabilities));
    }
    let d = logits.max(probabilities);
    assert!(
        d <= TOL,
        "{what}: logits {logits}, probabilities {probabilities}"
    );
    d
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn segmentation_batches_equal_single_calls() {
    let images = images();
    for model in CLIPSEG_MODELS {
        let seg = Segmenter::load(model_dir(model).to_str().unwrap(), &load_options()).unwrap();
        // Different prompts and counts per image, one list long enough to decode in chunks.
        let many: Vec<String> = (0..MAX_PROMPTS_PER_DECODE + 3)
            .map(|i| format!("object number {i}"))
            .collect();
        let prompts = [
            seg.prompts(&["a cat", "a remote control", "a cup"])
                .unwrap(),
            seg.prompts(&["a sofa"]).unwrap(),
            seg.prompts(&many).unwrap(),
        ];
        let params = [
            SegmentParams::default(),
            SegmentParams { threshold: 0.3 },
            SegmentParams { threshold: 0.6 },
        ];
        let inputs: Vec<SegmentInput<'_>> = (0..3)
            .map(|i| SegmentInput {
                image: &images[i],
                prompts: &prompts[i],
                params: &params[i],
            })
            .collect();
        let mut max = 0.0f32;
        for n in 1..=3 {
            let batched = seg.segment_batch(&inputs[..n]).unwrap();
            assert_eq!(batched.len(), n);
            for (i, (input, b)) in inputs.iter().zip(&batched).enumerate() {
                assert_eq!(b.timings.forward, batched[0].timings.forward);
                let s = seg
                    .segment(input.image, input.prompts, input.params)
                    .unwrap();
                let what = format!("{model}, batch of {n}, image {i}");
                max = max.max(segmentation_diff(b, &s, &what));
            }
        }
        eprintln!("{model}: max |batched - single| = {max:.2e} (relative logits, probabilities)");
        // The same prompts on two images give different logits: a batch decoding one image's
        // state for another would not pass.
        let two = seg
            .segment_batch(&[0, 1].map(|i| SegmentInput {
                image: &images[i],
                prompts: &prompts[0],
                params: &params[0],
            }))
            .unwrap();
        assert!(max_diff(&two[0].logits.data, &two[1].logits.data) > 1e-3);
        // Shared prompts in one batch, in another order.
        let reordered = [2, 0, 1].map(|i| SegmentInput {
            image: &images[i],
            prompts: &prompts[0],
            params: &params[0],
        });
        for (input, b) in reordered.iter().zip(seg.segment_batch(&reordered).unwrap()) {
            let s = seg
                .segment(input.image, input.prompts, input.params)
                .unwrap();
            segmentation_diff(&b, &s, &format!("{model}, shared prompts"));
        }
    }
}

#[test]
fn invalid_segmentation_inputs_fail_as_single_calls_do() {
    let images = images();
    let seg = Segmenter::load(
        model_dir(CLIPSEG_MODELS[0]).to_str().unwrap(),
        &load_options(),
    )
    .unwrap();
    assert!(seg.segment_batch(&[]).unwrap().is_empty());
    let prompts = seg.prompts(&["a cat"]).unwrap();
    let empty = PromptEmbeddings {
        texts: Vec::new(),
        embeds: prompts.embeds.narrow(0, 0, 0).unwrap(),
        truncated: Vec::new(),
    };
    let good_params = SegmentParams::default();
    let bad_params = SegmentParams { threshold: 1.5 };
    for (k, (p, params)) in [(&empty, &good_params), (&*prompts, &bad_params)]
        .into_iter()
        .enumerate()
    {
        let alone = seg.segment(&images[0], p, params).unwrap_err().to_string();
        let bad = SegmentInput {
            image: &images[0],
            prompts: p,
            params,
        };
        let good = SegmentInput {
            image: &images[1],
            prompts: &prompts,
            params: &good_params,
        };
        for inputs in [vec![bad], vec![good, bad]] {
            let err = seg.segment_batch(&inputs).unwrap_err().to_string();
            assert_eq!(err, alone, "case {k}");
        }
    }
}
