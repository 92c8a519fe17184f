//! BLIP captioning and generative VQA parity with transformers 5.17.0's `generate` on the tiny
//! random checkpoints of scripts/make_blip_fixtures.py (blip-tiny: BlipForConditionalGeneration;
//! blip-tiny-vqa: BlipForQuestionAnswering), for 4 images x prompts / questions x generation
//! settings (greedy, beam search with 3 and 4 beams, length penalties, early_stopping true /
//! false / "never", min_length, min_new_tokens, repetition penalty, the default 20 new tokens,
//! 64 new tokens over the whole position table):
//!
//! - the decoder's prompt (`[DEC]` + prompt tokens without the trailing `[SEP]`) and the
//!   question's token ids identical to the processor's;
//! - generated token ids identical to `generate`'s sequences, and the decoded text identical;
//! - greedy: each step's processed score of the chosen token, and beam search:
//!   `sequences_scores`, to 1e-4 absolute;
//! - the first step's logits (one image, no prompt) to 1e-4;
//! - the cases cover both ends of a generation (the stop token, the length limit).
//!
//! Generation runs from the processor's own pixels (pixel_values.npy): near-tied candidates
//! would otherwise turn on resampling differences. Our preprocessing is compared to those
//! pixels separately, and one end-to-end caption from the image file.

mod common;

use common::*;
use vlm_perception::pipeline::generate::{GenerationConfig, StopReason};
use vlm_perception::pipeline::BlipGenerator;
use vlm_perception::vision::image_io::load_rgb;

const SCORE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;

fn load(model: &str) -> BlipGenerator {
    BlipGenerator::load(model_dir(model).to_str().unwrap(), &load_options()).unwrap()
}

fn cases_json(model: &str) -> serde_json::Value {
    json(&fixtures().join("reference").join(model).join("cases.json"))
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn pixels(stem: &str) -> candle_core::Tensor {
    // the VQA checkpoint's processor is the same as blip-tiny's (checked by the script)
    npy_f32(&reference_dir("blip-tiny", stem).join("pixel_values.npy"))
}

/// Runs every case of `model`; returns (cases, stopped on EOS, stopped on length).
fn check_model(model: &str) -> (usize, usize, usize) {
    let gen = load(model);
    let refs = cases_json(model);
    let (mut n, mut eos, mut length) = (0, 0, 0);
    for image in refs["images"].as_array().unwrap() {
        let stem = image["stem"].as_str().unwrap();
        let pv = pixels(stem);
        for case in image["cases"].as_array().unwrap() {
            let text = case["text"].as_str();
            let what = format!("{model}/{stem} {:?} {}", text, case["setting"]);
            let config: GenerationConfig = serde_json::from_value(case["kwargs"].clone()).unwrap();
            let prompt = ids(&case["prompt_ids"]);
            let question = match model {
                "blip-tiny-vqa" => {
                    let q = gen.question_ids(text.unwrap()).unwrap();
                    assert_eq!(q, ids(&case["text_input_ids"]), "{what}: question ids");
                    Some(q)
                }
                _ => {
                    assert_eq!(gen.prompt_ids(text).unwrap(), prompt, "{what}: prompt ids");
                    None
                }
            };
            let out = gen
                .generate_from_pixels(&pv, &prompt, question.as_deref(), &config)
                .unwrap();
            assert_eq!(
                out.sequence,
                ids(&case["sequence"]),
                "{what}: sequence (score {:?} vs {})",
                out.sequence_score,
                case["sequence_score"]
            );
            let decoded = gen.tokenizer().decode(out.new_tokens(), true).unwrap();
            assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{what}: text");
            if let Some(score) = case["sequence_score"].as_f64() {
                let ours = out.sequence_score.unwrap();
                assert!(
                    (ours - score as f32).abs() <= SCORE_TOL,
                    "{what}: sequence score {ours} vs {score}"
                );
            } else {
                let want: Vec<f32> = case["step_scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(out.step_scores.len(), want.len(), "{what}: steps");
                for (t, (a, b)) in out.step_scores.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= SCORE_TOL,
                        "{what}: step {t} score {a} vs {b}"
                    );
                }
            }
            match out.stop {
                StopReason::Eos => eos += 1,
                StopReason::Length => length += 1,
            }
            n += 1;
        }
    }
    (n, eos, length)
}

#[test]
fn caption_token_ids_and_scores_match_generate() {
    let (n, eos, length) = check_model("blip-tiny");
    assert!(
        n >= 100 && eos > 10 && length > 10,
        "{n} cases: {eos} EOS, {length} length"
    );
}

#[test]
fn vqa_answer_ids_and_scores_match_generate() {
    let (n, eos, length) = check_model("blip-tiny-vqa");
    assert!(
        n >= 30 && eos > 3 && length > 3,
        "{n} cases: {eos} EOS, {length} length"
    );
}

#[test]
fn first_step_logits_match_the_decoder() {
    let gen = load("blip-tiny");
    let want = npy_f32(&fixtures().join("reference/blip-tiny/first_logits.npy"));
    // one greedy step reports the chosen token's score; compare the full row via max_new_tokens 1
    let config = GenerationConfig {
        max_new_tokens: Some(1),
        ..Default::default()
    };
    let prompt = gen.prompt_ids(None).unwrap();
    let out = gen
        .generate_from_pixels(&pixels("chelsea"), &prompt, None, &config)
        .unwrap();
    let want_v = want.to_vec1::<f32>().unwrap();
    let (best, best_v) =
        want_v.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |a, (i, &v)| if v > a.1 { (i, v) } else { a },
        );
    assert_eq!(out.new_tokens(), &[best as u32]);
    assert!((out.step_scores[0] - best_v).abs() <= LOGIT_TOL);
    let ours = gen.first_logits(&pixels("chelsea"), &prompt).unwrap();
    let diff = max_abs_diff(&ours, &want);
    assert!(diff <= LOGIT_TOL, "first-step logits differ by {diff}");
}

#[test]
fn preprocessing_matches_the_processor_pixels() {
    let gen = load("blip-tiny");
    for stem in ["chelsea", "coffee", "chelsea_107x181"] {
        let ours = gen
            .pixel_values(&load_rgb(&image_path(&format!("{stem}.png"))).unwrap())
            .unwrap();
        let want = pixels(stem);
        // torchvision's antialiased bicubic vs Pillow's: a few uint8 levels at edges
        let (max, mean) = (max_abs_diff(&ours, &want), mean_abs_diff(&ours, &want));
        assert!(
            max < 0.15 && mean < 0.01,
            "{stem}: pixels differ by max {max}, mean {mean}"
        );
    }
}

#[test]
fn caption_from_an_image_file() {
    let gen = load("blip-tiny");
    let image = load_rgb(&image_path("coffee.png")).unwrap();
    let refs = cases_json("blip-tiny");
    let coffee = refs["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["stem"] == "coffee")
        .unwrap();
    let case = coffee["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["setting"] == "beam3" && c["text"] == "a photo of")
        .unwrap();
    let config: GenerationConfig = serde_json::from_value(case["kwargs"].clone()).unwrap();
    let out = gen.caption(&image, Some("a photo of"), &config).unwrap();
    let seq = ids(&case["sequence"]);
    let prompt_len = ids(&case["prompt_ids"]).len();
    assert_eq!(out.token_ids, seq[prompt_len..].to_vec());
    // [UNK] is a special token: decode(skip_special_tokens=True) leaves it out
    assert!(out.text.starts_with("a of "), "{}", out.text);
    assert_eq!((out.width, out.height), (image.width(), image.height()));
    // a VQA call on a captioning checkpoint is refused
    assert!(gen.answer(&image, "what is this?", &config).is_err());
}

/// The generated ids of one reference case (after the prompt).
fn reference_new_tokens(model: &str, stem: &str, text: &str, setting: &str) -> Vec<u32> {
    let refs = cases_json(model);
    let image = refs["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["stem"] == stem)
        .unwrap();
    let case = image["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["setting"] == setting && c["text"] == text)
        .unwrap();
    ids(&case["sequence"])[ids(&case["prompt_ids"]).len()..].to_vec()
}

#[test]
fn caption_and_ask_clis_match_generate() {
    let image = image_path("coffee.png");
    let out = cli_json(&[
        "caption",
        "--model",
        model_dir("blip-tiny").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "a photo of",
        "--num-beams",
        "3",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    let want = reference_new_tokens("blip-tiny", "coffee", "a photo of", "beam3");
    assert_eq!(ids(&out["token_ids"]), want);
    assert!(out["score"].as_f64().is_some() && out["stop"].is_string());
    let question = "how many cats are there?";
    let out = cli_json(&[
        "ask",
        "--model",
        model_dir("blip-tiny-vqa").to_str().unwrap(),
        "--image",
        image_path("chelsea.png").to_str().unwrap(),
        "--question",
        question,
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    let want = reference_new_tokens("blip-tiny-vqa", "chelsea", question, "greedy");
    assert_eq!(ids(&out["token_ids"]), want);
    assert_eq!(out["prompt"], question);
}
