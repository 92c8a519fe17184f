//! Text tokenizers: `tokenizer.json` when the checkpoint ships one, else rebuilt from the
//! vocabulary files older hub repos carry (CLIP byte-level BPE from `vocab.json` + `merges.txt`,
//! BERT WordPiece from `vocab.txt`), the way transformers' `convert_slow_tokenizer` does.

use std::collections::HashMap;

use serde::Deserialize;
use tokenizers::{
    decoders::{
        byte_level::ByteLevel as ByteLevelDecoder, wordpiece::WordPiece as WordPieceDecoder,
    },
    models::{bpe::BPE, wordpiece::WordPiece},
    normalizers::{
        bert::BertNormalizer, replace::ReplacePattern, unicode::NFC,
        utils::Sequence as NormalizerSequence, Lowercase, Replace,
    },
    pre_tokenizers::{
        bert::BertPreTokenizer,
        byte_level::ByteLevel,
        sequence::Sequence as PreTokenizerSequence,
        split::{Split, SplitPattern},
    },
    processors::{roberta::RobertaProcessing, template::TemplateProcessing},
    AddedToken, SplitDelimiterBehavior, Tokenizer, TruncationParams,
};

use super::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// CLIP's pre-tokenizer pattern (transformers `CLIPConverter`).
const CLIP_SPLIT_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";
/// BERT's WordPiece defaults (transformers `BertConverter`).
const BERT_CLS: &str = "[CLS]";
const BERT_SEP: &str = "[SEP]";
const BERT_UNK: &str = "[UNK]";
const BERT_PAD: &str = "[PAD]";

/// Which vocabulary family a model uses, for rebuilding a tokenizer without tokenizer.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// CLIP byte-level BPE (OWL-ViT, CLIPSeg).
    ClipBpe,
    /// BERT uncased WordPiece (ViLT).
    BertWordPiece,
}

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pad every sequence to the model's maximum length (OWL-ViT's processor does this).
    MaxLength,
    /// Pad to the longest sequence of the batch.
    Longest,
}

/// Token ids of a batch of texts, padded to one length.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    pub type_ids: Vec<Vec<u32>>,
    /// Whether each text was cut to the model's maximum length.
    pub truncated: Vec<bool>,
}

impl TokenBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }
}

/// A token written in tokenizer_config.json either as a string or as an AddedToken dict.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Added { content: s } => s,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    pad_token: Option<TokenSpec>,
    unk_token: Option<TokenSpec>,
    do_lower_case: Option<bool>,
}

/// A tokenizer plus the padding/truncation rules of one model.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_len: usize,
    model: String,
}

impl TextTokenizer {
    /// Loads the tokenizer of `ckpt`; `max_len` is the text tower's max_position_embeddings and
    /// `default_pad_id` the config's pad_token_id, used when the tokenizer files name no pad token.
    pub fn load(
        ckpt: &Checkpoint,
        kind: TokenizerKind,
        max_len: usize,
        default_pad_id: u32,
    ) -> Result<Self> {
        let err = |reason: String| Error::Tokenizer {
            model: ckpt.name.clone(),
            reason,
        };
        let config: TokenizerConfig = ckpt
            .file("tokenizer_config.json")
            .or_else(|| ckpt.file("special_tokens_map.json"))
            .map(|p| super::checkpoint::read_json(&p))
            .transpose()?
            .unwrap_or_default();
        let mut inner = if let Some(path) = ckpt.file("tokenizer.json") {
            Tokenizer::from_file(&path).map_err(|e| err(format!("`{}`: {e}", path.display())))?
        } else {
            match kind {
                TokenizerKind::ClipBpe => build_clip_bpe(ckpt, &config).map_err(err)?,
                TokenizerKind::BertWordPiece => build_bert_wordpiece(ckpt, &config).map_err(err)?,
            }
        };
        // Padding is done here, per batch; the file's own settings would fight with that.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| err(e.to_string()))?;
        let pad_id = config
            .pad_token
            .as_ref()
            .and_then(|t| inner.token_to_id(t.content()))
            .unwrap_or(default_pad_id);
        Ok(Self {
            inner,
            pad_id,
            max_len,
            model: ckpt.name.clone(),
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The text of `ids`, as transformers' `decode`: with `skip_special`, special and added
    /// special tokens (BLIP's `[DEC]`, `[SEP]`) are left out; the file's decoder joins the rest.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer {
                model: self.model.clone(),
                reason: format!("cannot decode {ids:?}: {e}"),
            })
    }

    /// Tokenizes `texts` with special tokens, truncating to the model's maximum length (with a
    /// warning, as transformers does) and padding as asked.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S], padding: Padding) -> Result<TokenBatch> {
        let mut batch = TokenBatch {
            ids: Vec::with_capacity(texts.len()),
            attention_mask: Vec::with_capacity(texts.len()),
            type_ids: Vec::with_capacity(texts.len()),
            truncated: Vec::with_capacity(texts.len()),
        };
        for text in texts {
            let text = text.as_ref();
            let enc = self
                .inner
                .encode(text, true)
                .map_err(|e| Error::Tokenizer {
                    model: self.model.clone(),
                    reason: format!("cannot tokenize {text:?}: {e}"),
                })?;
            let truncated = !enc.get_overflowing().is_empty();
            if truncated {
                tracing::warn!(
                    model = %self.model,
                    "text {text:?} is longer than the model's {} tokens and was truncated",
                    self.max_len
                );
            }
            batch.ids.push(enc.get_ids().to_vec());
            batch.attention_mask.push(enc.get_attention_mask().to_vec());
            batch.type_ids.push(enc.get_type_ids().to_vec());
            batch.truncated.push(truncated);
        }
        let target = match padding {
            Padding::MaxLength => self.max_len,
            Padding::Longest => batch.ids.iter().map(Vec::len).max().unwrap_or(0),
        };
        for i in 0..batch.ids.len() {
            let missing = target.saturating_sub(batch.ids[i].len());
            batch.ids[i].extend(std::iter::repeat_n(self.pad_id, missing));
            batch.attention_mask[i].extend(std::iter::repeat_n(0, missing));
            batch.type_ids[i].extend(std::iter::repeat_n(0, missing));
        }
        Ok(batch)
    }
}

fn read_to_string(ckpt: &Checkpoint, name: &str) -> std::result::Result<String, String> {
    let path = ckpt.file(name).ok_or_else(|| {
        format!(
            "no tokenizer.json and no {name} in `{}`",
            ckpt.dir.display()
        )
    })?;
    std::fs::read_to_string(&path).map_err(|e| format!("`{}`: {e}", path.display()))
}

/// transformers' `CLIPConverter`: NFC + whitespace folding + lowercase, CLIP's split regex then
/// byte-level, BPE with `</w>` word ends, `<|startoftext|> ... <|endoftext|>` around each text.
fn build_clip_bpe(
    ckpt: &Checkpoint,
    config: &TokenizerConfig,
) -> std::result::Result<Tokenizer, String> {
    let vocab: HashMap<String, u32> = serde_json::from_str(&read_to_string(ckpt, "vocab.json")?)
        .map_err(|e| format!("vocab.json: {e}"))?;
    let merges: Vec<(String, String)> = read_to_string(ckpt, "merges.txt")?
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merges.txt: bad line {l:?}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let id = |tok: &str| {
        vocab
            .get(tok)
            .copied()
            .ok_or_else(|| format!("vocab.json lacks `{tok}`"))
    };
    let (bos, eos) = (id(CLIP_BOS)?, id(CLIP_EOS)?);
    let unk = config
        .unk_token
        .as_ref()
        .map_or(CLIP_EOS, TokenSpec::content)
        .to_string();
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(unk)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(bpe);
    let replace =
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| e.to_string())?;
    tok.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        replace.into(),
        Lowercase.into(),
    ])));
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| e.to_string())?;
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.with_post_processor(Some(
        RobertaProcessing::new((CLIP_EOS.into(), eos), (CLIP_BOS.into(), bos))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    tok.add_special_tokens(&[
        AddedToken::from(CLIP_BOS, true),
        AddedToken::from(CLIP_EOS, true),
    ]);
    Ok(tok)
}

/// transformers' `BertConverter`: BERT normalizer (lowercasing per tokenizer_config), BERT
/// pre-tokenizer, WordPiece with `##` continuations, `[CLS] ... [SEP]` around each text.
fn build_bert_wordpiece(
    ckpt: &Checkpoint,
    config: &TokenizerConfig,
) -> std::result::Result<Tokenizer, String> {
    let vocab: HashMap<String, u32> = read_to_string(ckpt, "vocab.txt")?
        .lines()
        .enumerate()
        .map(|(i, tok)| (tok.to_string(), i as u32))
        .collect();
    let id = |tok: &str| {
        vocab
            .get(tok)
            .copied()
            .ok_or_else(|| format!("vocab.txt lacks `{tok}`"))
    };
    let (cls, sep) = (id(BERT_CLS)?, id(BERT_SEP)?);
    let wordpiece = WordPiece::builder()
        .vocab(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
        )
        .unk_token(BERT_UNK.into())
        .continuing_subword_prefix("##".into())
        .build()
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(wordpiece);
    let lowercase = config.do_lower_case.unwrap_or(true);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    let template = TemplateProcessing::builder()
        .try_single(format!("{BERT_CLS}:0 $A:0 {BERT_SEP}:0"))
        .and_then(|b| b.try_pair(format!("{BERT_CLS}:0 $A:0 {BERT_SEP}:0 $B:1 {BERT_SEP}:1")))
        .map_err(|e| e.to_string())?
        .special_tokens(vec![(BERT_CLS, cls), (BERT_SEP, sep)])
        .build()
        .map_err(|e| e.to_string())?;
    tok.with_post_processor(Some(template));
    tok.add_special_tokens(&[
        AddedToken::from(BERT_CLS, true),
        AddedToken::from(BERT_SEP, true),
        AddedToken::from(BERT_UNK, true),
        AddedToken::from(BERT_PAD, true),
        AddedToken::from("[MASK]", true),
    ]);
    Ok(tok)
}
