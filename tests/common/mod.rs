//! Shared helpers of the integration tests: fixture paths, reference tensors, comparisons,
//! running the CLI binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Tensor};
use vlm_perception::models::KernelPath;
use vlm_perception::pipeline::tokenizer::TokenBatch;
use vlm_perception::pipeline::{Detector, LoadOptions};

/// The environment variable that picks the kernel path of the parity tests' models.
pub const KERNEL_PATH_VAR: &str = "VLM_TEST_KERNEL_PATH";

/// The kernel path the tests load their models on: the native CPU kernels, or with
/// `VLM_TEST_KERNEL_PATH=generic` the candle ops a GPU runs (scripts/test.sh runs the parity
/// tests both ways, against the same references and tolerances). Any other value is an error,
/// so that a typo cannot quietly test the native path twice.
pub fn kernel_path() -> KernelPath {
    match std::env::var(KERNEL_PATH_VAR).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("native") => KernelPath::Native,
        Ok("generic") => KernelPath::Generic,
        other => panic!("{KERNEL_PATH_VAR}={other:?}: expected `native` or `generic`"),
    }
}

/// f32 on the CPU, on [`kernel_path`].
pub fn load_options() -> LoadOptions {
    LoadOptions {
        kernels: kernel_path(),
        ..LoadOptions::default()
    }
}

/// `dtype` on the CPU, on [`kernel_path`].
pub fn load_options_in(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        ..load_options()
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

pub fn reference_dir(model: &str, image_stem: &str) -> PathBuf {
    fixtures().join("reference").join(model).join(image_stem)
}

/// The image stems that have references for `model`, sorted; fails below `min` of them.
pub fn stems_at_least(model: &str, min: usize) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures().join("reference").join(model))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(v.len() >= min, "{model}: too few reference images: {v:?}");
    v
}

/// meta.json of one reference.
pub fn meta(model: &str, stem: &str) -> serde_json::Value {
    json(&reference_dir(model, stem).join("meta.json"))
}

/// A list of strings in a meta.json (`queries`, `prompts`, `questions`).
pub fn strings(meta: &serde_json::Value, key: &str) -> Vec<String> {
    meta[key]
        .as_array()
        .unwrap_or_else(|| panic!("meta.json has no list `{key}`"))
        .iter()
        .map(|q| q.as_str().unwrap().to_string())
        .collect()
}

/// A reference tensor written by scripts/make_fixtures.py, as f32.
pub fn npy_f32(path: &Path) -> Tensor {
    Tensor::read_npy(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .to_dtype(DType::F32)
        .unwrap()
}

/// A reference integer tensor (token ids, masks) as rows of u32.
pub fn npy_ids(path: &Path) -> Vec<Vec<u32>> {
    let t =
        Tensor::read_npy(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|v| v as u32).collect())
        .collect()
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// |a - b| in f32, for two tensors of the same shape.
fn abs_diff(a: &Tensor, b: &Tensor) -> Tensor {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_diff(a, b)
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Mean absolute difference between two tensors of the same shape.
pub fn mean_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    abs_diff(a, b)
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Our pixel values against the processor's with its PIL backend (`pixel_values_pil.npy` in
/// `dir`): the same shape, at most `max_tol` apart anywhere, under `mean_tol` on average.
/// Prints the largest difference, and the one to the torchvision backend's
/// `pixel_values.npy` where `dir` has it. `what` names the case.
pub fn assert_pixels_match_pil(ours: &Tensor, dir: &Path, max_tol: f32, mean_tol: f32, what: &str) {
    let pil = npy_f32(&dir.join("pixel_values_pil.npy"));
    assert_eq!(ours.dims(), pil.dims(), "{what}: size");
    let diff = max_abs_diff(ours, &pil);
    let torchvision = dir.join("pixel_values.npy");
    if torchvision.exists() {
        let diff_tv = max_abs_diff(ours, &npy_f32(&torchvision));
        eprintln!("{what}: max |ours - PIL| = {diff:.2e}, |ours - torchvision| = {diff_tv:.2e}");
    }
    assert!(
        diff <= max_tol,
        "{what}: max |ours - PIL| = {diff} > {max_tol}"
    );
    let mean = mean_abs_diff(ours, &pil);
    assert!(
        mean < mean_tol,
        "{what}: mean |ours - PIL| = {mean} >= {mean_tol}"
    );
}

/// Our tokens against the processor's `input_ids.npy` and `attention_mask.npy` in `dir`, and
/// its `token_type_ids.npy` with `type_ids` (BERT-style tokenizers). `what` names the case.
pub fn assert_ids_match_processor(batch: &TokenBatch, dir: &Path, type_ids: bool, what: &str) {
    assert_eq!(batch.ids, npy_ids(&dir.join("input_ids.npy")), "{what}");
    assert_eq!(
        batch.attention_mask,
        npy_ids(&dir.join("attention_mask.npy")),
        "{what}: attention mask"
    );
    if type_ids {
        assert_eq!(
            batch.type_ids,
            npy_ids(&dir.join("token_type_ids.npy")),
            "{what}: token type ids"
        );
    }
}

/// Largest absolute value of a tensor (the scale relative tolerances refer to).
pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs the `vlm-perception` binary with `args`.
pub fn cli(args: &[&str]) -> Output {
    cli_with_env(args, &[])
}

pub fn cli_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlm-perception"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run vlm-perception")
}

/// stdout of a successful run parsed as JSON; panics with stderr otherwise.
pub fn cli_json(args: &[&str]) -> serde_json::Value {
    let out = cli(args);
    assert!(
        out.status.success(),
        "vlm-perception {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts that a failing run exited with code 1 (not a panic: 101) and that stderr mentions
/// every one of `needles`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure, got {:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

/// A fixture detector (OWL-ViT or OWLv2) on the CPU in f32, on [`kernel_path`].
pub fn load_detector(model: &str) -> Detector {
    Detector::load(model_dir(model).to_str().unwrap(), &load_options()).unwrap()
}

/// Reference detections of post_processed.json under `key`, sorted like ours (score desc).
pub fn reference_detections(model: &str, stem: &str, key: &str) -> Vec<(usize, f32, [f32; 4])> {
    let pp = json(&reference_dir(model, stem).join("post_processed.json"));
    let entry = &pp[key];
    let mut v: Vec<(usize, f32, [f32; 4])> = entry["scores"]
        .as_array()
        .unwrap()
        .iter()
        .zip(entry["labels"].as_array().unwrap())
        .zip(entry["boxes"].as_array().unwrap())
        .map(|((s, l), b)| {
            (
                l.as_u64().unwrap() as usize,
                s.as_f64().unwrap() as f32,
                json_box(b),
            )
        })
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// A box's four coordinates from a JSON array of numbers.
pub fn json_box(b: &serde_json::Value) -> [f32; 4] {
    let b: Vec<f32> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    [b[0], b[1], b[2], b[3]]
}

/// Largest coordinate difference of two boxes, in pixels.
pub fn box_max_diff(a: [f32; 4], b: [f32; 4]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
