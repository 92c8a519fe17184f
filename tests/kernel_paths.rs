//! Both kernel paths of every model family, side by side on the fixtures: the native CPU
//! kernels and the candle ops a GPU runs (`LoadOptions::kernels`), in f32, f16 and bf16,
//! against transformers' f32 outputs (scripts/make_fixtures.py).
//!
//! The parity suites run whole on the generic path as well (scripts/test.sh runs them again
//! with `VLM_TEST_KERNEL_PATH=generic`: the same references, the same tolerances). This file
//! adds what those runs cannot show:
//! - that the generic path is other code: its f32 outputs are not bit-identical to the native
//!   path's (our kernels and candle's ops round differently), yet within the parity tolerance
//!   of them;
//! - reduced precision on both paths against the f32 reference, within the bounds below.
//!
//! Bounds: the largest absolute difference from transformers' f32 output, relative to the
//! output's largest magnitude (at least 1), per dtype. f16 keeps 11 significant bits and bf16
//! 8, rounded at every layer's output and weight; the bounds are about three times the largest
//! difference measured on these fixtures (printed by each test).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use vlm_perception::models::KernelPath;
use vlm_perception::pipeline::{Classifier, Detector, LoadOptions, Segmenter, VqaModel};

/// f32 outputs of the two paths: at most this far apart (the parity suites' logit tolerance).
const PATHS_TOL: f32 = 1e-4;
/// Relative bound of f16 outputs against the f32 reference.
const F16_REL_TOL: f32 = 8e-3;
/// Relative bound of bf16 outputs against the f32 reference.
const BF16_REL_TOL: f32 = 6e-2;

/// One fixture case: a model, a reference image, and the reference outputs it is checked on.
struct Case {
    model: &'static str,
    stem: &'static str,
    /// The outputs compared, by their reference file's stem (`logits` -> `logits.npy`).
    outputs: &'static [&'static str],
}

/// One model of each family: OWL-ViT and OWLv2 detection, CLIPSeg segmentation, ViLT VQA,
/// CLIP zero-shot classification.
const CASES: &[Case] = &[
    Case {
        model: "owlvit-tiny-p16",
        stem: "coffee_64x64",
        outputs: &["logits", "pred_boxes"],
    },
    Case {
        model: "owlv2-tiny-p16",
        stem: "chelsea",
        outputs: &["logits", "pred_boxes", "objectness_logits"],
    },
    Case {
        model: "clipseg-tiny-rd16",
        stem: "coffee_96x96",
        outputs: &["logits"],
    },
    Case {
        model: "vilt-tiny-vqa",
        stem: "chelsea",
        outputs: &["q0/logits"],
    },
    Case {
        model: "clip-tiny",
        stem: "chelsea",
        outputs: &["logits_per_image"],
    },
];

/// The CLIP case's label set (four labels, the default template) in its `meta.json`.
const CLIP_CASE: usize = 1;

fn options(dtype: DType, kernels: KernelPath) -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype,
        kernels,
    }
}

/// The case's outputs from its reference inputs, in f32, in the order of `case.outputs`.
fn run(case: &Case, opts: &LoadOptions) -> Vec<Tensor> {
    let dir = reference_dir(case.model, case.stem);
    let model = model_dir(case.model);
    let model = model.to_str().unwrap();
    let m = meta(case.model, case.stem);
    let pixel_values = npy_f32(&dir.join("pixel_values.npy"))
        .to_dtype(opts.dtype)
        .unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    if case.model.starts_with("owl") {
        let det = Detector::load(model, opts).unwrap();
        let queries = det.encode_queries(&strings(&m, "queries")).unwrap();
        let out = det.forward(&pixel_values, &queries).unwrap();
        let mut outputs = vec![f32(&out.logits), f32(&out.pred_boxes)];
        outputs.extend(out.objectness_logits.as_ref().map(f32));
        outputs
    } else if case.model.starts_with("clip-") {
        let clf = Classifier::load(model, opts).unwrap();
        let c = &m["cases"][CLIP_CASE];
        let template = c["hypothesis_template"]
            .as_str()
            .unwrap_or(vlm_perception::pipeline::DEFAULT_HYPOTHESIS_TEMPLATE);
        let labels = clf.encode_labels(&strings(c, "labels"), template).unwrap();
        vec![f32(&clf.forward(&pixel_values, &labels).unwrap())]
    } else if case.model.starts_with("clipseg") {
        let seg = Segmenter::load(model, opts).unwrap();
        let prompts = seg.encode_prompts(&strings(&m, "prompts")).unwrap();
        vec![f32(&seg.forward(&pixel_values, &prompts).unwrap())]
    } else {
        let vqa = VqaModel::load(model, opts).unwrap();
        let q = dir.join("q0");
        let ids = |name: &str| {
            let rows = npy_ids(&q.join(name));
            Tensor::new(rows, &Device::Cpu).unwrap()
        };
        let pixel_mask = npy_f32(&dir.join("pixel_mask.npy"));
        let out = vqa
            .model()
            .forward(
                &ids("input_ids.npy"),
                &ids("attention_mask.npy"),
                &ids("token_type_ids.npy"),
                &pixel_values,
                Some(&pixel_mask),
            )
            .unwrap();
        vec![f32(&out.logits)]
    }
}

fn reference(case: &Case) -> Vec<Tensor> {
    let dir = reference_dir(case.model, case.stem);
    if case.model.starts_with("clip-") {
        // stored in meta.json: one row of logits
        let m = meta(case.model, case.stem);
        let row: Vec<f32> = m["cases"][CLIP_CASE]["logits_per_image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let n = row.len();
        return vec![Tensor::from_vec(row, (1, n), &Device::Cpu).unwrap()];
    }
    case.outputs
        .iter()
        .map(|name| npy_f32(&dir.join(format!("{name}.npy"))))
        .collect()
}

#[test]
fn generic_path_is_other_code_with_the_same_numbers() {
    for case in CASES {
        let native = run(case, &options(DType::F32, KernelPath::Native));
        let generic = run(case, &options(DType::F32, KernelPath::Generic));
        let mut largest = 0f32;
        for ((name, n), g) in case.outputs.iter().zip(&native).zip(&generic) {
            let d = max_abs_diff(n, g);
            eprintln!("{}/{name}: native vs generic {d:.2e}", case.model);
            assert!(
                d < PATHS_TOL,
                "{}/{name}: the paths differ by {d}",
                case.model
            );
            largest = largest.max(d);
        }
        assert!(
            largest > 0.0,
            "{}: the generic path gave the native path's outputs bit for bit: it did not run \
             the candle ops",
            case.model
        );
    }
}

#[test]
fn reduced_precision_stays_close_to_f32_on_both_paths() {
    for case in CASES {
        let reference = reference(case);
        for (dtype, tol) in [(DType::F16, F16_REL_TOL), (DType::BF16, BF16_REL_TOL)] {
            for kernels in [KernelPath::Native, KernelPath::Generic] {
                let outputs = run(case, &options(dtype, kernels));
                for ((name, ours), want) in case.outputs.iter().zip(&outputs).zip(&reference) {
                    let scale = max_abs(want).max(1.0);
                    let rel = max_abs_diff(ours, want) / scale;
                    eprintln!(
                        "{}/{name} {dtype:?} {kernels:?}: {rel:.2e} of {scale:.2}",
                        case.model
                    );
                    assert!(
                        rel < tol,
                        "{}/{name} {dtype:?} {kernels:?}: {rel} relative (bound {tol})",
                        case.model
                    );
                }
            }
        }
    }
}
