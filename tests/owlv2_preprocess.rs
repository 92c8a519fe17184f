//! OWLv2 preprocessing (src/vision/owlv2_preprocess.rs) against transformers 5.17.0 on the
//! fixtures of scripts/make_fixtures.py: every image of the OWLv2 references (landscape,
//! portrait, square, upscaled) and the query image of the OWLv2 image-guided reference.
//!
//! Tolerances:
//! - against the default torchvision backend (`pixel_values.npy`): max |diff| <= 1e-5 in
//!   normalised units (float rounding only: torch sums its 2-D blur in another order);
//! - against the PIL backend (`pixel_values_pil.npy`, scipy): not a target. Our distance to it
//!   must equal the torchvision backend's own distance (meta.json) within 1e-5; measured
//!   ~1e-3 under wide blurs, ~0.08 on the borders of the upscaled image.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use vlm_perception::vision::image_io::load_rgb;
use vlm_perception::vision::owlv2_preprocess::{Owlv2ImageProcessor, OWLV2_PAD_VALUE};
use vlm_perception::vision::preprocess::PreprocessorConfig;

const MODELS: &[&str] = &["owlv2-tiny-p16", "owlv2-tiny-p16-bin"];
/// Max |ours - torchvision backend| in normalised units.
const TORCHVISION_TOL: f32 = 1e-5;

fn processor(model: &str) -> Owlv2ImageProcessor {
    let path = model_dir(model).join("preprocessor_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg: PreprocessorConfig = serde_json::from_str(&text).unwrap();
    Owlv2ImageProcessor::from_config(&cfg).unwrap()
}

fn ours(model: &str, image: &str) -> Tensor {
    let img = load_rgb(&image_path(image)).unwrap();
    processor(model).preprocess(&img, &Device::Cpu).unwrap()
}

#[test]
fn pixel_values_match_the_torchvision_backend() {
    let mut worst = 0f32;
    for model in MODELS {
        for stem in stems_at_least(model, 2) {
            let m = meta(model, &stem);
            let image = m["image"].as_str().unwrap();
            let got = ours(model, image);
            let reference = npy_f32(&reference_dir(model, &stem).join("pixel_values.npy"));
            let diff = max_abs_diff(&got, &reference);
            println!(
                "{model}/{stem} ({} -> {}, blur {}): max |ours - torchvision| = {diff:.2e}",
                m["original_size_hw"], m["processor_input_size_hw"], m["antialias"]["kernel_size"]
            );
            assert!(
                diff <= TORCHVISION_TOL,
                "{model}/{stem}: max |ours - torchvision| = {diff} > {TORCHVISION_TOL}"
            );
            worst = worst.max(diff);
        }
    }
    println!("worst: {worst:.2e}");
}

#[test]
fn distance_to_the_pil_backend_is_the_torchvision_backends() {
    for model in MODELS {
        for stem in stems_at_least(model, 2) {
            let m = meta(model, &stem);
            let got = ours(model, m["image"].as_str().unwrap());
            let pil = npy_f32(&reference_dir(model, &stem).join("pixel_values_pil.npy"));
            let diff = max_abs_diff(&got, &pil);
            let theirs = m["pixel_values_max_abs_diff_torchvision_vs_pil"]
                .as_f64()
                .unwrap() as f32;
            println!(
                "{model}/{stem}: max |ours - PIL| = {diff:.2e} (torchvision - PIL: {theirs:.2e})"
            );
            assert!(
                (diff - theirs).abs() <= TORCHVISION_TOL,
                "{model}/{stem}: |ours - PIL| = {diff}, transformers' torchvision backend: {theirs}"
            );
        }
    }
}

#[test]
fn sizes_and_pad_value_match_meta() {
    for model in MODELS {
        let p = processor(model);
        for stem in stems_at_least(model, 2) {
            let m = meta(model, &stem);
            let hw = |key: &str| -> (usize, usize) {
                let v = m[key].as_array().unwrap();
                (
                    v[0].as_u64().unwrap() as usize,
                    v[1].as_u64().unwrap() as usize,
                )
            };
            let (h, w) = hw("original_size_hw");
            assert_eq!(p.padded_size(h, w), hw("padded_size_hw"), "{model}/{stem}");
            assert_eq!(
                p.output_size(h, w),
                hw("processor_input_size_hw"),
                "{model}/{stem}"
            );
            assert_eq!(m["box_scale"].as_u64().unwrap() as usize, h.max(w));
            assert_eq!(m["pad_value"].as_f64().unwrap() as f32, OWLV2_PAD_VALUE);
        }
    }
}

#[test]
fn upscaled_image_shows_black_padding() {
    // chelsea_31x33 is padded to 33 x 33 and upscaled to 48 x 48 without blur: the output columns
    // whose two taps both lie in the two padding columns hold exactly the normalised pad value.
    let model = "owlv2-tiny-p16-bin";
    let m = meta(model, "chelsea_31x33");
    let pad: Vec<f32> = m["pad_value_normalized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let got = ours(model, "chelsea_31x33.png");
    let reference = npy_f32(&reference_dir(model, "chelsea_31x33").join("pixel_values.npy"));
    for t in [&got, &reference] {
        // source column of output 47: 33/48 * 47.5 - 0.5 = 32.2 -> taps 32, 32 (padding)
        let last = t.narrow(3, 47, 1).unwrap().flatten_all().unwrap();
        let last = last.to_vec1::<f32>().unwrap();
        for (c, chunk) in last.chunks(48).enumerate() {
            assert!(chunk.iter().all(|&v| v == pad[c]), "channel {c}: {chunk:?}");
        }
    }
}

#[test]
fn image_guided_query_matches_reference() {
    // The OWLv2 image-guided reference: target and query image go through the same processor.
    let model = "owlv2-tiny-p16";
    let dir = fixtures()
        .join("reference")
        .join("image_guided")
        .join(model);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let m = json(&entry.unwrap().path().join("meta.json"));
        for (image_key, pixels_key) in [
            ("target_image", "pixel_values"),
            ("query_image", "query_pixel_values"),
        ] {
            let image = m[image_key].as_str().unwrap();
            let reference = npy_f32(&fixtures().join(m[pixels_key].as_str().unwrap()));
            let diff = max_abs_diff(&ours(model, image), &reference);
            assert!(diff <= TORCHVISION_TOL, "{image}: {diff}");
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn full_size_photo_is_preprocessed_at_960() {
    // The released checkpoints' size: a 1280 x 720 frame pads to 1280 x 1280 and is blurred with
    // a 3-tap kernel (sigma 1/6) before the 960 x 960 resize.
    let src = load_rgb(&image_path("chelsea.png")).unwrap();
    let frame = image::imageops::resize(&src, 1280, 720, image::imageops::FilterType::Triangle);
    let p = Owlv2ImageProcessor::new(960);
    let start = std::time::Instant::now();
    let out = p.preprocess(&frame, &Device::Cpu).unwrap();
    println!("1280x720 -> 960x960 in {:?}", start.elapsed());
    assert_eq!(out.dims(), [1, 3, 960, 960]);
    // rows below 720 * 960 / 1280 = 540 (away from the edge) are padding
    let pad_row = out.narrow(2, 600, 1).unwrap().flatten_all().unwrap();
    let v = pad_row.to_vec1::<f32>().unwrap();
    let mean = vlm_perception::vision::preprocess::OPENAI_CLIP_MEAN;
    let std = vlm_perception::vision::preprocess::OPENAI_CLIP_STD;
    for (c, chunk) in v.chunks(960).enumerate() {
        let want = (0.0 - mean[c]) / std[c];
        assert!(chunk.iter().all(|&x| x == want), "channel {c}");
    }
}
