//! Hub ids resolve through the standard Hugging Face cache layout
//! (`models--org--name/{refs,snapshots}`), offline, and a miss is explained.

mod common;

use std::path::Path;

use common::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Writes `models--tiny--owlvit` into `cache` the way huggingface_hub does: blobs behind
/// symlinks in a snapshot named by the commit, and refs/main naming that commit.
fn write_cache(cache: &Path) {
    let repo = cache.join("models--tiny--owlvit");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
    for entry in std::fs::read_dir(model_dir("owlvit-tiny-p16")).unwrap() {
        let src = entry.unwrap().path();
        let name = src.file_name().unwrap().to_owned();
        let blob = repo.join("blobs").join(&name);
        std::fs::copy(&src, &blob).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&name), snapshot.join(&name))
            .unwrap();
    }
}

fn detect_hub(model: &str, cache: &Path) -> std::process::Output {
    let image = image_path("coffee_64x64.png");
    cli_with_env(
        &[
            "detect",
            "--model",
            model,
            "--image",
            image.to_str().unwrap(),
            "--query",
            "a cup",
            "--json",
        ],
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    )
}

#[test]
fn hub_id_resolves_from_the_cache_by_branch_and_by_commit() {
    let cache = tempfile::tempdir().unwrap();
    write_cache(cache.path());
    let local = cli_json(&[
        "detect",
        "--model",
        model_dir("owlvit-tiny-p16").to_str().unwrap(),
        "--image",
        image_path("coffee_64x64.png").to_str().unwrap(),
        "--query",
        "a cup",
        "--json",
    ]);
    for id in ["tiny/owlvit", &format!("tiny/owlvit@{COMMIT}")] {
        let out = detect_hub(id, cache.path());
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v, local,
            "{id}: the cached checkpoint must give the local directory's output"
        );
    }
}

#[test]
fn cache_miss_names_the_id_the_path_and_the_fix() {
    let cache = tempfile::tempdir().unwrap();
    let out = detect_hub("google/owlvit-base-patch32", cache.path());
    let expected_path = cache.path().join("models--google--owlvit-base-patch32");
    assert_fails_with(
        &out,
        &[
            "google/owlvit-base-patch32",
            expected_path.to_str().unwrap(),
            "huggingface-cli download google/owlvit-base-patch32",
        ],
    );
}
