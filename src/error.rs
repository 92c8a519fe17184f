//! The library's one error type: each variant names what failed (a model, a file, an input).

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model directory `{0}` does not exist")]
    ModelDirMissing(PathBuf),

    #[error(
        "model `{id}` is not in the Hugging Face cache (looked in `{cache}`) and could not be \
         downloaded: {reason}. Fetch it on a machine with network access with \
         `huggingface-cli download {id}` (then copy the cache or set HF_HUB_CACHE), or pass a \
         local directory in hub layout to --model"
    )]
    ModelNotCached {
        id: String,
        cache: PathBuf,
        reason: String,
    },

    #[error("`{dir}` has no {what}")]
    MissingFile { dir: PathBuf, what: String },

    #[error("cannot read `{path}`: {reason}")]
    Io { path: PathBuf, reason: String },

    #[error("invalid config `{path}`: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("model `{model}` is a `{found}` checkpoint, but this task needs {expected}")]
    WrongArchitecture {
        model: String,
        found: String,
        expected: String,
    },

    #[error("unsupported setting in `{model}`: {reason}")]
    Unsupported { model: String, reason: String },

    #[error("cannot load weights of `{model}` from `{path}` (corrupt file, or weights that do not match config.json?): {source}")]
    Weights {
        model: String,
        path: PathBuf,
        #[source]
        source: Box<candle_core::Error>,
    },

    #[error("tokenizer of `{model}`: {reason}")]
    Tokenizer { model: String, reason: String },

    #[error("image `{name}`: {reason}")]
    Image { name: String, reason: String },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("unknown device `{0}` (expected `cpu`, `cuda` or `cuda:N`)")]
    Device(String),

    #[error("unknown dtype `{0}` (expected `f32`, `f16` or `bf16`)")]
    DType(String),

    /// A tensor operation failed (boxed: candle's error is large and errors are rare).
    #[error(transparent)]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for Error {
    fn from(err: candle_core::Error) -> Self {
        Self::Candle(Box::new(err))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.into(),
            reason: err.to_string(),
        }
    }
}
