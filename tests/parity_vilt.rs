//! ViLT VQA parity with transformers 5.17.0 on the tiny random checkpoints of
//! scripts/make_fixtures.py (vilt-tiny-vqa: tokenizer.json + safetensors, 3x3 position table;
//! vilt-tiny-vqa-b: vocab.txt + pytorch_model.bin, 4x4 table), on photos and a small
//! non-square crop (201x87, which hits the 1333/800 longer-edge cap and the size_divisor floor):
//! question ids (a short and an over-long question), resize sizes, preprocessing, logits and
//! answer scores, and the `ask` CLI end to end.
//!
//! Tolerances (stated once, used below):
//! - answer scores (sigmoid of the logits) from the reference inputs: 1e-4 absolute (the
//!   spec); logits 1e-4 absolute;
//! - preprocessing: one uint8 level (1/255/0.5 = 0.0078) against transformers' PIL backend;
//! - the CLI (every fixture image is resized, small ones scaled up): the same 1e-4 on scores
//!   against transformers' PIL-backend pixels run through the model (1e-3 for the JPEG photo,
//!   whose decoders differ).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use vlm_perception::pipeline::VqaModel;
use vlm_perception::vision::image_io::load_rgb;

const MODELS: &[&str] = &["vilt-tiny-vqa", "vilt-tiny-vqa-b"];
const SCORE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;

fn stems(model: &str) -> Vec<String> {
    stems_at_least(model, 4)
}

fn questions(meta: &serde_json::Value) -> Vec<String> {
    strings(meta, "questions")
}

fn load(model: &str) -> VqaModel {
    VqaModel::load(model_dir(model).to_str().unwrap(), &load_options()).unwrap()
}

fn ids_tensor(rows: Vec<Vec<u32>>) -> Tensor {
    Tensor::new(rows, &Device::Cpu).unwrap()
}

#[test]
fn question_ids_match_processor_including_truncation() {
    for model in MODELS {
        let vqa = load(model);
        for stem in stems(model) {
            let m = meta(model, &stem);
            for (qi, q) in questions(&m).iter().enumerate() {
                let dir = reference_dir(model, &stem).join(format!("q{qi}"));
                let t = vqa.tokenize(q).unwrap();
                assert_ids_match_processor(&t, &dir, true, &format!("{model}/{stem}/q{qi}"));
                // q1 is longer than max_position_embeddings and is cut to it.
                assert_eq!(t.truncated, [qi == 1], "{model}/{stem}/q{qi}");
            }
        }
    }
}

#[test]
fn preprocessing_matches_pil_within_one_level() {
    const ONE_LEVEL: f32 = 1.0 / 255.0 / 0.5 + 1e-5;
    for model in MODELS {
        let vqa = load(model);
        for stem in stems(model) {
            let dir = reference_dir(model, &stem);
            let m = meta(model, &stem);
            let img = load_rgb(&image_path(m["image"].as_str().unwrap())).unwrap();
            let ours = vqa.pixel_values(&img).unwrap();
            // (the sizes match: the shortest-edge / 1333:800 / size_divisor rule gives the
            // processor's size)
            let what = format!("{model}/{stem}");
            assert_pixels_match_pil(&ours, &dir, ONE_LEVEL, 0.1 * ONE_LEVEL, &what);
        }
    }
}

#[test]
fn logits_and_scores_match_reference_from_reference_inputs() {
    for model in MODELS {
        let vqa = load(model);
        for stem in stems(model) {
            let img_dir = reference_dir(model, &stem);
            let pixel_values = npy_f32(&img_dir.join("pixel_values.npy"));
            let pixel_mask = npy_f32(&img_dir.join("pixel_mask.npy"));
            let m = meta(model, &stem);
            for qi in 0..questions(&m).len() {
                let dir = img_dir.join(format!("q{qi}"));
                let ids = ids_tensor(npy_ids(&dir.join("input_ids.npy")));
                let mask = ids_tensor(npy_ids(&dir.join("attention_mask.npy")));
                let types = ids_tensor(npy_ids(&dir.join("token_type_ids.npy")));
                let out = vqa
                    .model()
                    .forward(&ids, &mask, &types, &pixel_values, Some(&pixel_mask))
                    .unwrap();
                let reference = npy_f32(&dir.join("logits.npy"));
                let d = max_abs_diff(&out.logits, &reference);
                let sig = candle_nn::ops::sigmoid(&out.logits).unwrap();
                let ref_scores = json(&dir.join("scores.json"));
                let ref_sig: Vec<f32> = ref_scores["sigmoid"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                let ds = max_abs_diff(
                    &sig.squeeze(0).unwrap(),
                    &Tensor::new(ref_sig, &Device::Cpu).unwrap(),
                );
                eprintln!("{model}/{stem}/q{qi}: logits max abs diff {d:.2e}, scores {ds:.2e}");
                assert!(d < LOGIT_TOL, "{model}/{stem}/q{qi}: logits differ by {d}");
                assert!(
                    ds < SCORE_TOL,
                    "{model}/{stem}/q{qi}: scores differ by {ds}"
                );
                // Without a mask (a single image's mask is all ones) the result is the same.
                let no_mask = vqa
                    .model()
                    .forward(&ids, &mask, &types, &pixel_values, None)
                    .unwrap();
                assert_eq!(max_abs_diff(&no_mask.logits, &out.logits), 0.0);
            }
        }
    }
}

#[test]
fn padded_batch_mask_is_honoured() {
    // A pixel mask that marks only the top-left patch rows as real (what ViltImageProcessor
    // produces for the smaller image of a padded batch): the padded patches must not change
    // the answer, i.e. it equals the answer for the cropped pixels alone.
    let vqa = load("vilt-tiny-vqa");
    let dir = reference_dir("vilt-tiny-vqa", "chelsea");
    let pv = npy_f32(&dir.join("pixel_values.npy")); // (1, 3, 64, 96): 2x3 patches
    let q = dir.join("q0");
    let ids = ids_tensor(npy_ids(&q.join("input_ids.npy")));
    let mask = ids_tensor(npy_ids(&q.join("attention_mask.npy")));
    let types = ids_tensor(npy_ids(&q.join("token_type_ids.npy")));
    let cropped = pv.narrow(2, 0, 32).unwrap().narrow(3, 0, 64).unwrap();
    let alone = vqa
        .model()
        .forward(&ids, &mask, &types, &cropped, None)
        .unwrap();
    let mut pm = vec![vec![0f32; 96]; 64];
    for row in pm.iter_mut().take(32) {
        row[..64].iter_mut().for_each(|v| *v = 1.0);
    }
    let pm = Tensor::new(vec![pm], &Device::Cpu).unwrap();
    let padded = vqa
        .model()
        .forward(&ids, &mask, &types, &pv, Some(&pm))
        .unwrap();
    let d = max_abs_diff(&alone.logits, &padded.logits);
    assert!(d < 1e-5, "padding changed the logits by {d}");
}

fn ask_cli(model: &str, image: &str, question: &str, extra: &[&str]) -> serde_json::Value {
    let model = model_dir(model);
    let image = image_path(image);
    let mut args = vec![
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--question",
        question,
        "--json",
    ];
    args.extend_from_slice(extra);
    cli_json(&args)
}

#[test]
fn cli_answers_match_reference_scores() {
    // Every fixture image is resized (photos scaled down; 1x1, 31x33 and a 20x64 strip scaled
    // up, which transformers accepts). Our resize is Pillow's, so the reference is the same model
    // call on transformers' PIL-backend pixels (`logits_pil.npy`): every answer's score within
    // the model tolerance, and the answer order wherever the reference scores are more than
    // twice that apart. The torchvision-backend scores are printed for comparison. JPEG
    // sources decode differently (zune-jpeg vs libjpeg-turbo): bounded at 1e-3 there.
    const JPEG_SCORE_TOL: f32 = 1e-3;
    let decoded = json(&fixtures().join("images").join("decoded.json"));
    for model in MODELS {
        for stem in stems(model) {
            let m = meta(model, &stem);
            for (qi, q) in questions(&m).iter().enumerate() {
                let qdir = reference_dir(model, &stem).join(format!("q{qi}"));
                let sigmoid = |t: Tensor| -> Vec<f32> {
                    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    v.into_iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect()
                };
                let reference = sigmoid(npy_f32(&qdir.join("logits_pil.npy")));
                let torchvision = sigmoid(npy_f32(&qdir.join("logits.npy")));
                let labels = json(&model_dir(model).join("config.json"))["id2label"].clone();
                let label = |i: usize| labels[i.to_string()].as_str().unwrap().to_string();

                let out = ask_cli(model, m["image"].as_str().unwrap(), q, &[]);
                assert_eq!(out["question"], q.as_str());
                assert_eq!(
                    out["answers"].as_array().unwrap().len(),
                    5,
                    "default top-k is 5"
                );
                let all = ask_cli(model, m["image"].as_str().unwrap(), q, &["--top-k", "1000"]);
                let ours = all["answers"].as_array().unwrap();
                assert_eq!(ours.len(), reference.len());
                let (mut worst, mut worst_tv) = (0f32, 0f32);
                for a in ours {
                    let i = (0..reference.len())
                        .find(|&i| label(i) == a["answer"].as_str().unwrap())
                        .unwrap();
                    let score = a["score"].as_f64().unwrap() as f32;
                    worst = worst.max((score - reference[i]).abs());
                    worst_tv = worst_tv.max((score - torchvision[i]).abs());
                }
                eprintln!(
                    "{model}/{stem}/q{qi} CLI (resized input): max score diff {worst:.2e} \
                     ({worst_tv:.2e} against the torchvision backend)"
                );
                let lossless = decoded[m["image"].as_str().unwrap()]["lossless"]
                    .as_bool()
                    .unwrap();
                let tol = if lossless { SCORE_TOL } else { JPEG_SCORE_TOL };
                assert!(worst < tol, "{model}/{stem}/q{qi}: {worst}");
                let mut order: Vec<usize> = (0..reference.len()).collect();
                order.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]));
                for (rank, w) in order.windows(2).enumerate() {
                    let clear = |a: usize, b: usize| reference[a] - reference[b] > 2.0 * tol;
                    let before = rank == 0 || clear(order[rank - 1], w[0]);
                    if before && clear(w[0], w[1]) {
                        assert_eq!(
                            ours[rank]["answer"],
                            label(w[0]).as_str(),
                            "{model}/{stem}/q{qi}: rank {rank}"
                        );
                    }
                }
                let scores: Vec<f64> = ours.iter().map(|a| a["score"].as_f64().unwrap()).collect();
                assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
            }
        }
    }
}

#[test]
fn images_the_processor_refuses_are_refused_with_the_size() {
    // The fixture records the images transformers' own processor refuses (a 500x1 strip: the
    // shortest-edge resize rounds a side to 0); everything else it accepts is covered above.
    for model in MODELS {
        let refused = json(
            &fixtures()
                .join("reference")
                .join("refused")
                .join(format!("{model}.json")),
        );
        let refused = refused.as_array().unwrap();
        assert!(!refused.is_empty());
        for r in refused {
            let [w, h] = [0, 1].map(|i| r["size_wh"][i].as_u64().unwrap());
            let image = image_path(r["image"].as_str().unwrap());
            assert_fails_with(
                &cli(&[
                    "ask",
                    "--model",
                    model_dir(model).to_str().unwrap(),
                    "--image",
                    image.to_str().unwrap(),
                    "--question",
                    "why?",
                ]),
                &[&format!("{w}x{h}"), "less than one 32x32 patch"],
            );
        }
    }
}

#[test]
fn top_k_is_clamped_to_the_vocabulary_and_text_output_is_readable() {
    let out = ask_cli(
        "vilt-tiny-vqa",
        "coffee.png",
        "what is this?",
        &["--top-k", "3"],
    );
    assert_eq!(out["answers"].as_array().unwrap().len(), 3);
    let out = ask_cli(
        "vilt-tiny-vqa",
        "coffee.png",
        "what is this?",
        &["--top-k", "500"],
    );
    assert_eq!(
        out["answers"].as_array().unwrap().len(),
        12,
        "12 answers in id2label"
    );
    let model = model_dir("vilt-tiny-vqa-b");
    let image = image_path("rocket.jpg");
    let out = cli(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--question",
        "what is in the sky?",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Q: what is in the sky?") && stdout.contains("  1. "),
        "{stdout}"
    );
}

#[test]
fn over_long_question_is_truncated_with_a_warning() {
    let model = model_dir("vilt-tiny-vqa");
    let image = image_path("chelsea.png");
    let q = "what is the color of the object that is standing in the middle of this picture next to the window?";
    let out = cli(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--question",
        q,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("truncated") && stderr.contains("16 tokens"),
        "no truncation warning: {stderr}"
    );
    // A short question warns about nothing.
    let out = cli(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--question",
        "how many cats are there?",
    ]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

#[test]
fn bad_inputs_fail_cleanly() {
    let model = model_dir("vilt-tiny-vqa");
    let m = model.to_str().unwrap();
    let image = image_path("coffee.png");
    let img = image.to_str().unwrap();
    assert_fails_with(
        &cli(&["ask", "--model", m, "--image", img, "--question", ""]),
        &["question is empty"],
    );
    assert_fails_with(
        &cli(&["ask", "--model", m, "--image", img, "--question", "   "]),
        &["question is empty"],
    );
    assert_fails_with(
        &cli(&[
            "ask",
            "--model",
            m,
            "--image",
            img,
            "--question",
            "why?",
            "--top-k",
            "0",
        ]),
        &["--top-k"],
    );
    // Wrong architecture: an OWL-ViT and a CLIPSeg directory.
    for (other, arch) in [
        ("owlvit-tiny-p16", "OwlViTForObjectDetection"),
        ("clipseg-tiny-rd16", "CLIPSegForImageSegmentation"),
    ] {
        let dir = model_dir(other);
        assert_fails_with(
            &cli(&[
                "ask",
                "--model",
                dir.to_str().unwrap(),
                "--image",
                img,
                "--question",
                "why?",
            ]),
            &[arch, "ViltForQuestionAnswering"],
        );
    }
    // An image smaller than one 32 px patch is scaled up, as transformers' processor does; a
    // strip whose resize holds no whole patch row is refused, as there.
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(20, 20, image::Rgb([1, 2, 3]))
        .save(&tiny)
        .unwrap();
    let out = ask_cli("vilt-tiny-vqa", tiny.to_str().unwrap(), "why?", &[]);
    assert_eq!(out["answers"].as_array().unwrap().len(), 5);
    let strip = dir.path().join("strip.png");
    image::RgbImage::from_pixel(2000, 40, image::Rgb([1, 2, 3]))
        .save(&strip)
        .unwrap();
    assert_fails_with(
        &cli(&[
            "ask",
            "--model",
            m,
            "--image",
            strip.to_str().unwrap(),
            "--question",
            "why?",
        ]),
        &["2000x40", "less than one 32x32 patch"],
    );
    // A config.json that does not match the weights (12 answers in the classifier).
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg = json(&copy.path().join("config.json"));
    cfg["id2label"] = serde_json::json!({"0": "yes", "1": "no"});
    std::fs::write(copy.path().join("config.json"), cfg.to_string()).unwrap();
    assert_fails_with(
        &cli(&[
            "ask",
            "--model",
            copy.path().to_str().unwrap(),
            "--image",
            img,
            "--question",
            "why?",
        ]),
        &["do not match config.json", "classifier.3"],
    );
    // A missing model directory.
    assert_fails_with(
        &cli(&[
            "ask",
            "--model",
            "./no/such/model",
            "--image",
            img,
            "--question",
            "why?",
        ]),
        &["./no/such/model"],
    );
}

#[test]
fn task_object_is_shareable_across_threads() {
    // The ROS node keeps one loaded model behind an Arc and calls it from worker threads.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VqaModel>();
    assert_send_sync::<vlm_perception::pipeline::VqaResult>();
}
