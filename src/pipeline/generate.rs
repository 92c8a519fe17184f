//! Text generation as transformers' `generate` does it (v5.17.0 `generation/utils.py`,
//! `_sample` without sampling and the vectorised `_beam_search`; `logits_process.py`), for any
//! decoder behind [`StepDecoder`]: one forward step a token against the decoder's own cache.
//!
//! Semantics kept from transformers:
//! - length: `max_new_tokens` gives `max_length = prompt + max_new_tokens`; without either,
//!   20 new tokens capped at the model's positions; `min_new_tokens` overrides `min_length`
//!   (a total length, prompt included);
//! - logits processors in transformers' order: repetition penalty (on every token of the
//!   sequence, prompt included: negative scores multiplied, positive divided), then the
//!   minimum length (the stop token at -inf while the sequence is shorter);
//! - greedy: the processed logits' argmax (the first of equal maxima, as `torch.argmax`);
//! - beam search: log-softmax, processors, scores accumulated in f32; the top `2 * num_beams`
//!   continuations; those that hit the stop token or the length limit are candidates for the
//!   finished set (only among the first `num_beams`), scored `sum / generated^length_penalty`;
//!   the best `num_beams` unfinished ones run on; `early_stopping` (`true`, `false`, `"never"`)
//!   decides when the search may stop before the length limit, exactly as
//!   `_check_early_stop_heuristic` / `_beam_search_has_unfinished_sequences`;
//!   -1e9 stands for "excluded" as there (f32 arithmetic included).
//!
//! Exact ties between candidates go to the lower (beam, token) index. `torch.topk` documents no
//! order for equal values, so a reference can disagree on a tie; real logits do not tie.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// transformers' "excluded" score.
const EXCLUDED: f32 = -1.0e9;
/// `GenerationConfig.max_length`'s default: 20 new tokens when no length is given.
const DEFAULT_NEW_TOKENS: usize = 20;

/// `early_stopping`: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EarlyStopping {
    Bool(bool),
    Never(NeverTag),
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self::Bool(false)
    }
}

/// The string `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeverTag {
    Never,
}

impl EarlyStopping {
    fn is_true(self) -> bool {
        self == Self::Bool(true)
    }

    fn is_never(self) -> bool {
        matches!(self, Self::Never(_))
    }
}

/// The generation settings of transformers' `GenerationConfig` that greedy and beam search
/// read (fields as in generation_config.json / `generate` kwargs; absent ones default as there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub max_new_tokens: Option<usize>,
    pub max_length: Option<usize>,
    pub min_length: usize,
    pub min_new_tokens: Option<usize>,
    pub num_beams: usize,
    /// f64 as Python's float: transformers divides by `len ** length_penalty` computed in
    /// double precision.
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub repetition_penalty: f64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: None,
            max_length: None,
            min_length: 0,
            min_new_tokens: None,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::default(),
            repetition_penalty: 1.0,
        }
    }
}

impl GenerationConfig {
    /// (max_length, min_length) for a prompt of `prompt_len` tokens and a model of
    /// `max_positions` positions, as `_prepare_generated_length`.
    fn lengths(&self, prompt_len: usize, max_positions: usize) -> Result<(usize, usize)> {
        let max_length = match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => prompt_len + n,
            (None, Some(m)) => m,
            (None, None) => (prompt_len + DEFAULT_NEW_TOKENS).min(max_positions),
        };
        if prompt_len >= max_length {
            return Err(Error::InvalidInput(format!(
                "the prompt has {prompt_len} tokens, the generation's max_length is {max_length}"
            )));
        }
        // the last token is generated, never fed back: positions 0..max_length - 1 are run
        if max_length > max_positions + 1 {
            return Err(Error::InvalidInput(format!(
                "max_length {max_length} exceeds the decoder's {max_positions} positions (plus \
                 the last token)"
            )));
        }
        let min_length = self
            .min_new_tokens
            .map_or(self.min_length, |n| prompt_len + n);
        Ok((max_length, min_length))
    }

    fn check(&self) -> Result<()> {
        if self.num_beams == 0 {
            return Err(Error::InvalidInput("num_beams must be at least 1".into()));
        }
        if self.max_new_tokens == Some(0) {
            return Err(Error::InvalidInput(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if self.repetition_penalty.is_nan()
            || self.repetition_penalty <= 0.0
            || !self.length_penalty.is_finite()
        {
            return Err(Error::InvalidInput(
                "repetition_penalty must be positive and length_penalty finite".into(),
            ));
        }
        Ok(())
    }
}

/// A decoder run one step at a time over rows (beams) that share its cache layout.
pub trait StepDecoder {
    /// Runs the prompt (one row) into a fresh cache: the next-token logits (vocab) after it.
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>>;
    /// One new token per cached row: each row's next-token logits.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>>;
    /// New row `i` continues old row `rows[i]` (expanding or reordering the cache).
    fn select_rows(&mut self, rows: &[u32]) -> Result<()>;
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The stop token was generated (it ends `tokens`).
    Eos,
    /// `max_length` was reached.
    Length,
}

/// A generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generated {
    /// The whole sequence, prompt included (as `generate`'s `sequences`).
    pub sequence: Vec<u32>,
    /// How many of them are the prompt.
    pub prompt_len: usize,
    /// Greedy: the processed score of each chosen token (`scores[t][token]`).
    pub step_scores: Vec<f32>,
    /// Beam search: the best beam's `sequences_scores` (log-probability over
    /// generated^length_penalty).
    pub sequence_score: Option<f32>,
    pub stop: StopReason,
}

impl Generated {
    /// The generated tokens (after the prompt).
    pub fn new_tokens(&self) -> &[u32] {
        &self.sequence[self.prompt_len..]
    }
}

/// Runs greedy search (`num_beams` 1) or beam search from `prompt`, stopping on `eos`.
pub fn generate(
    decoder: &mut impl StepDecoder,
    prompt: &[u32],
    eos: u32,
    max_positions: usize,
    config: &GenerationConfig,
) -> Result<Generated> {
    config.check()?;
    if prompt.is_empty() {
        return Err(Error::InvalidInput(
            "generation needs a prompt of at least one token".into(),
        ));
    }
    let (max_length, min_length) = config.lengths(prompt.len(), max_positions)?;
    let p = Processors {
        // torch multiplies f32 scores by the Python float cast to f32
        repetition_penalty: config.repetition_penalty as f32,
        min_length,
        eos,
    };
    if config.num_beams == 1 {
        greedy(decoder, prompt, max_length, &p)
    } else {
        beam_search(decoder, prompt, max_length, &p, config)
    }
}

/// The logits processors the settings switch on.
struct Processors {
    repetition_penalty: f32,
    min_length: usize,
    eos: u32,
}

impl Processors {
    fn apply(&self, sequence: &[u32], scores: &mut [f32]) {
        if self.repetition_penalty != 1.0 {
            // once per distinct token (torch gathers, penalises and scatters back)
            let mut seen: Vec<u32> = sequence.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s < 0.0 {
                        *s * self.repetition_penalty
                    } else {
                        *s / self.repetition_penalty
                    };
                }
            }
        }
        if sequence.len() < self.min_length {
            if let Some(s) = scores.get_mut(self.eos as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

fn greedy(
    decoder: &mut impl StepDecoder,
    prompt: &[u32],
    max_length: usize,
    p: &Processors,
) -> Result<Generated> {
    let mut sequence = prompt.to_vec();
    let mut step_scores = Vec::new();
    let mut logits = decoder.prefill(prompt)?;
    loop {
        p.apply(&sequence, &mut logits);
        let (token, score) = argmax(&logits);
        sequence.push(token);
        step_scores.push(score);
        let stop = if token == p.eos {
            Some(StopReason::Eos)
        } else if sequence.len() >= max_length {
            Some(StopReason::Length)
        } else {
            None
        };
        if let Some(stop) = stop {
            return Ok(Generated {
                sequence,
                prompt_len: prompt.len(),
                step_scores,
                sequence_score: None,
                stop,
            });
        }
        logits = one_row(decoder.step(&[token])?)?;
    }
}

fn one_row(mut rows: Vec<Vec<f32>>) -> Result<Vec<f32>> {
    match rows.len() {
        1 => Ok(rows.remove(0)),
        n => Err(Error::InvalidInput(format!(
            "the decoder returned {n} rows for 1"
        ))),
    }
}

/// The first maximum.
fn argmax(xs: &[f32]) -> (u32, f32) {
    let mut best = (0usize, xs.first().copied().unwrap_or(f32::NEG_INFINITY));
    for (i, &x) in xs.iter().enumerate().skip(1) {
        if x > best.1 {
            best = (i, x);
        }
    }
    (best.0 as u32, best.1)
}

/// `n ** length_penalty` as Python computes it (double), then cast as torch casts a scalar
/// divisor of an f32 tensor.
fn length_divisor(n: usize, length_penalty: f64) -> f32 {
    (n as f64).powf(length_penalty) as f32
}

/// `log_softmax` in f32 (max-shifted, as torch).
fn log_softmax(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = xs.iter().map(|&x| (x - max).exp()).sum();
    let log_sum = sum.ln();
    for x in xs.iter_mut() {
        *x = *x - max - log_sum;
    }
}

/// Indices of the `k` largest values, largest first; equal values by lower index.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// One hypothesis slot of the finished set.
#[derive(Clone)]
struct Finished {
    sequence: Vec<u32>,
    score: f32,
    done: bool,
}

fn beam_search(
    decoder: &mut impl StepDecoder,
    prompt: &[u32],
    max_length: usize,
    p: &Processors,
    config: &GenerationConfig,
) -> Result<Generated> {
    let beams = config.num_beams;
    // the top 2 * num_beams: with one stop token, at least num_beams stay unfinished
    let keep = 2 * beams;
    let lp = config.length_penalty;
    let prompt_len = prompt.len();
    let mut cur_len = prompt_len;
    let mut running: Vec<Vec<u32>> = vec![prompt.to_vec(); beams];
    let mut running_scores = vec![EXCLUDED; beams];
    running_scores[0] = 0.0;
    let mut finished = vec![
        Finished {
            sequence: prompt.to_vec(),
            score: EXCLUDED,
            done: false,
        };
        beams
    ];
    let mut improvable = true;
    // the prompt runs once; every beam starts from its cache
    let first = decoder.prefill(prompt)?;
    decoder.select_rows(&vec![0; beams])?;
    let mut rows: Vec<Vec<f32>> = vec![first; beams];
    loop {
        let vocab = rows[0].len();
        let mut acc = Vec::with_capacity(beams * vocab);
        for (b, mut row) in rows.into_iter().enumerate() {
            if row.len() != vocab {
                return Err(Error::InvalidInput(
                    "the decoder's rows differ in width".into(),
                ));
            }
            log_softmax(&mut row);
            p.apply(&running[b], &mut row);
            acc.extend(row.iter().map(|&x| x + running_scores[b]));
        }
        // c. the top continuations over every beam
        let top = top_k(&acc, keep);
        let cand: Vec<(usize, u32, f32)> = top
            .iter()
            .map(|&i| (i / vocab, (i % vocab) as u32, acc[i]))
            .collect();
        // d. which of them hit a stopping criterion
        let hits: Vec<bool> = cand
            .iter()
            .map(|&(_, t, _)| t == p.eos || cur_len + 1 >= max_length)
            .collect();
        // e. the best unfinished ones run on
        let masked: Vec<f32> = cand
            .iter()
            .zip(&hits)
            .map(|(&(_, _, s), &h)| s + if h { EXCLUDED } else { 0.0 })
            .collect();
        let next = top_k(&masked, beams);
        let extend = |k: usize| {
            let (b, t, _) = cand[k];
            let mut s = running[b].clone();
            s.push(t);
            s
        };
        let new_running: Vec<Vec<u32>> = next.iter().map(|&k| extend(k)).collect();
        let new_scores: Vec<f32> = next.iter().map(|&k| masked[k]).collect();
        let origins: Vec<u32> = next.iter().map(|&k| cand[k].0 as u32).collect();
        // f. finished candidates among the first num_beams join the finished set
        let all_done = finished.iter().all(|f| f.done);
        let denom = length_divisor(cur_len + 1 - prompt_len, lp);
        let mut merged = finished.clone();
        for (k, &(_, _, s)) in cand.iter().enumerate() {
            let just_finished = hits[k] && k < beams;
            let mut score = s / denom;
            if all_done && config.early_stopping.is_true() {
                score += EXCLUDED;
            }
            if !improvable {
                score += EXCLUDED;
            }
            if !just_finished {
                score += EXCLUDED;
            }
            merged.push(Finished {
                sequence: extend(k),
                score,
                done: just_finished,
            });
        }
        let merged_scores: Vec<f32> = merged.iter().map(|f| f.score).collect();
        finished = top_k(&merged_scores, beams)
            .into_iter()
            .map(|i| merged[i].clone())
            .collect();
        running = new_running;
        running_scores = new_scores;
        cur_len += 1;
        // the early-stop heuristic: can the best running beam still beat the worst finished?
        let best_len = if config.early_stopping.is_never() && lp > 0.0 {
            max_length - prompt_len
        } else {
            cur_len - prompt_len
        };
        let best_possible = running_scores[0] / length_divisor(best_len, lp);
        let min_finished = finished
            .iter()
            .map(|f| f.score)
            .fold(f32::INFINITY, f32::min);
        improvable = improvable
            && finished
                .iter()
                .any(|f| best_possible > if f.done { min_finished } else { EXCLUDED });
        let all_finished = finished.iter().all(|f| f.done);
        let open = !(all_finished && config.early_stopping.is_true());
        if !(improvable && open && !hits.iter().all(|&h| h)) {
            break;
        }
        // reorder the cache unless every beam continues itself
        if origins.iter().enumerate().any(|(i, &o)| o as usize != i) {
            decoder.select_rows(&origins)?;
        }
        let last: Vec<u32> = running.iter().map(|s| s[s.len() - 1]).collect();
        rows = decoder.step(&last)?;
        if rows.len() != beams {
            return Err(Error::InvalidInput(format!(
                "the decoder returned {} rows for {beams} beams",
                rows.len()
            )));
        }
    }
    let best = finished.swap_remove(0);
    let stop = if best.sequence.last() == Some(&p.eos) {
        StopReason::Eos
    } else {
        StopReason::Length
    };
    Ok(Generated {
        sequence: best.sequence,
        prompt_len,
        step_scores: Vec::new(),
        sequence_score: Some(best.score),
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_ties_by_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[0.5, -1.0], 5), vec![0, 1]);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 4.0, 4.0]), (1, 4.0));
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]).0, 0);
    }

    #[test]
    fn lengths_follow_transformers() {
        let c = GenerationConfig::default();
        assert_eq!(c.lengths(3, 512).unwrap(), (23, 0));
        assert_eq!(c.lengths(3, 10).unwrap(), (10, 0));
        let c = GenerationConfig {
            max_new_tokens: Some(5),
            min_new_tokens: Some(2),
            min_length: 9,
            ..Default::default()
        };
        assert_eq!(c.lengths(4, 512).unwrap(), (9, 6));
        assert!(c.lengths(4, 8).is_ok() && c.lengths(4, 7).is_err());
    }

    #[test]
    fn early_stopping_parses_as_generation_config_json() {
        let c: GenerationConfig =
            serde_json::from_str(r#"{"num_beams": 3, "early_stopping": "never"}"#).unwrap();
        assert!(c.early_stopping.is_never() && c.num_beams == 3);
        let c: GenerationConfig = serde_json::from_str(r#"{"early_stopping": true}"#).unwrap();
        assert!(c.early_stopping.is_true());
    }
}
