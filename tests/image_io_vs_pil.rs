//! Image input against Pillow: decoding in every format Pillow reads, and how close the Rust
//! resizer (a port of Pillow's, `vision::resample`) is to Pillow and to torchvision on a real
//! photo, at the sizes scripts/make_fixtures.py wrote (uint8 outputs).

mod common;

use candle_core::Tensor;
use common::*;
use vlm_perception::vision::{
    image_io::load_rgb,
    preprocess::{resize_rgb, Resample},
};

/// (max abs difference in uint8 levels, fraction of values that differ)
fn compare(ours: &image::RgbImage, reference: &Tensor) -> (u8, f64) {
    let r: Vec<u8> = reference.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(r.len(), ours.as_raw().len(), "size mismatch");
    let mut max = 0u8;
    let mut differ = 0usize;
    for (a, b) in ours.as_raw().iter().zip(&r) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        differ += usize::from(d > 0);
    }
    (max, differ as f64 / r.len() as f64)
}

#[test]
fn resizer_is_within_one_level_of_pillow_and_torchvision() {
    let img = load_rgb(&image_path("chelsea.png")).unwrap();
    let dir = fixtures().join("reference").join("resize");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "npy") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // chelsea_<backend>_<filter>_<H>x<W>
        let parts: Vec<&str> = name.split('_').collect();
        let [_, backend, filter, size] = parts[..] else {
            panic!("unexpected fixture {name}")
        };
        let (h, w) = size.split_once('x').unwrap();
        let (h, w): (usize, usize) = (h.parse().unwrap(), w.parse().unwrap());
        let resample = match filter {
            "bicubic" => Resample::Bicubic,
            "bilinear" => Resample::Bilinear,
            other => panic!("unexpected filter {other}"),
        };
        let reference = Tensor::read_npy(&path).unwrap();
        assert_eq!(
            reference.dims()[..2],
            [h, w],
            "{name}: fixture is (H, W, 3)"
        );
        let ours = resize_rgb(&img, h, w, resample).unwrap();
        let (max, frac) = compare(&ours, &reference);
        eprintln!(
            "{name}: max {max} level(s), {:.2}% of values differ",
            frac * 100.0
        );
        assert!(max <= 1, "{name}: differs by {max} levels");
        // Measured: Pillow BICUBIC 0-0.01% of values differ, BILINEAR <= 0.41%; torchvision
        // (itself 0.2-0.3% away from Pillow) <= 0.32%.
        let bound = if (backend, filter) == ("pil", "bicubic") {
            0.001
        } else {
            0.01
        };
        assert!(
            frac < bound,
            "{name}: {:.2}% of values differ",
            frac * 100.0
        );
        seen += 1;
    }
    assert!(seen >= 4, "too few resize fixtures in {}", dir.display());
}

#[test]
fn decoded_pixels_match_pillow() {
    // decoded.json holds Pillow's decoded RGB (sha256 and sum) per image, in every format Pillow
    // (so transformers) reads: PNG, JPEG, WebP (lossless and lossy), GIF (the first frame of an
    // animated one), BMP, TIFF. Lossless formats must decode to exactly Pillow's pixels. Lossy
    // decoders round differently: the image crate's zune-jpeg against libjpeg-turbo drifts by
    // 0.005 levels per value on rocket.jpg, image-webp against libwebp likewise; held to 0.01.
    use sha2::{Digest, Sha256};
    let decoded = json(&fixtures().join("images").join("decoded.json"));
    let mut formats = std::collections::BTreeSet::new();
    for (name, entry) in decoded.as_object().unwrap() {
        let img = load_rgb(&image_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let [h, w] = [0, 1].map(|i| entry["size_hw"][i].as_u64().unwrap() as u32);
        assert_eq!((img.height(), img.width()), (h, w), "{name}");
        let ours: u64 = img.as_raw().iter().map(|&v| u64::from(v)).sum();
        let theirs = entry["decoded_rgb_sum"].as_u64().unwrap();
        let per_value = (ours as f64 - theirs as f64).abs() / img.as_raw().len() as f64;
        eprintln!("{name}: sum {ours} vs Pillow {theirs} ({per_value:.2e} levels per value)");
        if entry["lossless"].as_bool().unwrap() {
            let sha: String = Sha256::digest(img.as_raw())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                sha,
                entry["decoded_rgb_sha256"].as_str().unwrap(),
                "{name}: lossless decoding must give Pillow's pixels"
            );
        } else {
            assert!(per_value < 1e-2, "{name}: {per_value} levels per value");
        }
        formats.insert(name.rsplit('.').next().unwrap().to_string());
    }
    assert_eq!(
        formats.into_iter().collect::<Vec<_>>(),
        ["bmp", "gif", "jpg", "png", "tiff", "webp"]
    );
}

#[test]
fn cli_detects_the_same_in_every_lossless_format() {
    // The same pixels as PNG, WebP (lossless), BMP and TIFF give the same detections; a GIF
    // (palette-quantised, so other pixels) and its animated variant (first frame) agree.
    let model = model_dir("owlvit-tiny-p16");
    let detect = |image: &str| {
        let path = image_path(image);
        let out = cli_json(&[
            "detect",
            "--model",
            model.to_str().unwrap(),
            "--image",
            path.to_str().unwrap(),
            "--query",
            "a photo of a cat",
            "--threshold",
            "0.0",
            "--json",
        ]);
        out["detections"].clone()
    };
    let png = detect("chelsea_201x87.png");
    assert!(!png.as_array().unwrap().is_empty());
    for other in [
        "chelsea_201x87.webp",
        "chelsea_201x87.bmp",
        "chelsea_201x87.tiff",
    ] {
        assert_eq!(detect(other), png, "{other}");
    }
    assert_eq!(
        detect("chelsea_201x87_animated.gif"),
        detect("chelsea_201x87.gif")
    );
}
