//! Bad input to the CLI: every case exits with code 1 and a message that names the problem,
//! never a panic.

mod common;

use std::path::Path;

use common::*;

fn detect(model: &Path, image: &Path, extra: &[&str]) -> std::process::Output {
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

/// A copy of a fixture checkpoint in a temp dir, for breaking it.
fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

const Q: &[&str] = &["--query", "a cup"];

#[test]
fn missing_model_directory() {
    let out = detect(Path::new("./no/such/dir"), &image_path("coffee.png"), Q);
    assert_fails_with(&out, &["no/such/dir", "does not exist"]);
}

#[test]
fn model_without_weights() {
    let dir = copy_model("owlvit-tiny-p16");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let out = detect(dir.path(), &image_path("coffee.png"), Q);
    assert_fails_with(&out, &["model.safetensors or pytorch_model.bin"]);
}

#[test]
fn corrupt_weights() {
    let dir = copy_model("owlvit-tiny-p16");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let out = detect(dir.path(), &image_path("coffee.png"), Q);
    assert_fails_with(&out, &["cannot load weights", "model.safetensors"]);
}

#[test]
fn corrupt_pytorch_bin() {
    let dir = copy_model("owlvit-tiny-p32-bin");
    std::fs::write(dir.path().join("pytorch_model.bin"), [0u8; 64]).unwrap();
    let out = detect(dir.path(), &image_path("coffee.png"), Q);
    assert_fails_with(&out, &["cannot load weights", "pytorch_model.bin"]);
}

#[test]
fn config_that_does_not_match_the_weights() {
    let dir = copy_model("owlvit-tiny-p16");
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["vision_config"]["intermediate_size"] = 80.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = detect(dir.path(), &image_path("coffee.png"), Q);
    assert_fails_with(&out, &["do not match config.json", "shape"]);
}

#[test]
fn unparsable_config() {
    let dir = copy_model("owlvit-tiny-p16");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let out = detect(dir.path(), &image_path("coffee.png"), Q);
    assert_fails_with(&out, &["config.json"]);
}

#[test]
fn checkpoint_of_another_architecture() {
    let out = detect(
        &model_dir("clipseg-tiny-rd16"),
        &image_path("coffee.png"),
        Q,
    );
    assert_fails_with(
        &out,
        &["CLIPSegForImageSegmentation", "OwlViTForObjectDetection"],
    );
}

#[test]
fn unreadable_empty_and_corrupt_images() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    assert_fails_with(
        &detect(&model_dir("owlvit-tiny-p16"), &missing, Q),
        &["missing.png"],
    );

    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert_fails_with(
        &detect(&model_dir("owlvit-tiny-p16"), &empty, Q),
        &["empty.png", "empty"],
    );

    // A JPEG cut in half.
    let bytes = std::fs::read(image_path("rocket.jpg")).unwrap();
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = detect(&model_dir("owlvit-tiny-p16"), &truncated, Q);
    // Some decoders fill a cut JPEG with grey; either that or a clean error is fine, a panic is not.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if !out.status.success() {
        assert_fails_with(&out, &["truncated.jpg"]);
    }

    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    assert_fails_with(
        &detect(&model_dir("owlvit-tiny-p16"), &garbage, Q),
        &["garbage.png"],
    );
}

#[test]
fn absurd_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.png");
    image::RgbImage::new(20_000, 1).save(&wide).unwrap();
    let out = detect(&model_dir("owlvit-tiny-p16"), &wide, Q);
    assert_fails_with(&out, &["wide.png", "20000"]);
}

#[test]
fn zero_queries_is_a_usage_error() {
    let out = detect(
        &model_dir("owlvit-tiny-p16"),
        &image_path("coffee.png"),
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--query"));
}

#[test]
fn empty_and_oversized_queries() {
    let out = detect(
        &model_dir("owlvit-tiny-p16"),
        &image_path("coffee.png"),
        &["--query", "a cup", "--query", "  "],
    );
    assert_fails_with(&out, &["query 1 is empty"]);
    let huge = "cup ".repeat(1000);
    let out = detect(
        &model_dir("owlvit-tiny-p16"),
        &image_path("coffee.png"),
        &["--query", &huge],
    );
    assert_fails_with(&out, &["query 0 has 4000 characters"]);
}

#[test]
fn long_query_is_truncated_with_a_warning() {
    let long = "a very long text query describing a small red rocket standing next to a white ceramic coffee cup on a table";
    let out = detect(
        &model_dir("owlvit-tiny-p16"),
        &image_path("coffee.png"),
        &["--query", long, "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("truncated"),
        "no truncation warning: {stderr}"
    );
}

#[test]
fn bad_flags() {
    let out = detect(
        &model_dir("owlvit-tiny-p16"),
        &image_path("coffee.png"),
        &["--query", "a", "--threshold", "1.5"],
    );
    assert_fails_with(&out, &["--threshold"]);
    let out = detect(
        &model_dir("owlvit-tiny-p16"),
        &image_path("coffee.png"),
        &["--query", "a", "--device", "tpu"],
    );
    assert_fails_with(&out, &["tpu"]);
}

#[test]
fn caption_bad_input() {
    let blip = model_dir("blip-tiny");
    let image = image_path("coffee.png");
    let caption = |extra: &[&str]| {
        let mut args = vec![
            "caption",
            "--model",
            blip.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ];
        args.extend(extra);
        cli(&args)
    };
    assert_fails_with(&caption(&["--num-beams", "0"]), &["num_beams"]);
    assert_fails_with(
        &caption(&["--max-new-tokens", "100"]),
        &["max_length", "64 positions"],
    );
    assert_fails_with(&caption(&["--prompt", "  "]), &["prompt"]);
    // a VQA checkpoint is not a captioner, a CLIP one not BLIP
    let out = cli(&[
        "caption",
        "--model",
        model_dir("clip-tiny").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
    ]);
    assert_fails_with(&out, &["CLIPModel", "BlipForConditionalGeneration"]);
}
