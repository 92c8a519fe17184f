//! Checkpoint resolution: a local directory in Hugging Face hub layout, or a hub id
//! (`org/name` or `org/name@revision`) resolved through the standard HF cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), downloading on a miss.

use std::path::{Path, PathBuf};

use candle_nn::VarBuilder;
use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};
use serde::de::DeserializeOwned;

use super::weights::SafetensorsFile;
use super::LoadOptions;
use crate::error::{Error, Result};
use crate::models::ModelVars;
use crate::vision::preprocess::PreprocessorConfig;

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// Files fetched from the hub besides config.json and the weights, when present in the repo.
const OPTIONAL_FILES: &[&str] = &[
    PREPROCESSOR_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
];

/// A resolved checkpoint: a directory holding config.json, weights and tokenizer files.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// What the user passed (`--model`), used in messages.
    pub name: String,
    pub dir: PathBuf,
}

/// The `architectures` / `model_type` fields every transformers config.json carries.
#[derive(Debug, serde::Deserialize)]
struct ArchitectureHeader {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

impl Checkpoint {
    /// Resolves `spec`: an existing directory is used as is; anything that looks like a path
    /// but does not exist is an error; otherwise `spec` is a hub id.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(spec, path);
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.matches('/').count() != 1;
        if looks_like_path {
            return Err(Error::ModelDirMissing(path.to_path_buf()));
        }
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (spec, "main"),
        };
        let dir = resolve_hub(id, revision)?;
        Self::from_dir(spec, &dir)
    }

    fn from_dir(name: &str, dir: &Path) -> Result<Self> {
        let ckpt = Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        };
        if ckpt.file(CONFIG_FILE).is_none() {
            return Err(Error::MissingFile {
                dir: ckpt.dir,
                what: CONFIG_FILE.into(),
            });
        }
        Ok(ckpt)
    }

    /// The path of `name` inside the checkpoint, if present.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join(name);
        p.is_file().then_some(p)
    }

    /// Parses a JSON file of the checkpoint into `T`.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.file(name).ok_or_else(|| Error::MissingFile {
            dir: self.dir.clone(),
            what: name.into(),
        })?;
        read_json(&path)
    }

    /// preprocessor_config.json, or all defaults when the checkpoint has none (the processor
    /// class's defaults then apply).
    pub fn preprocessor_config(&self) -> Result<PreprocessorConfig> {
        match self.file(PREPROCESSOR_FILE) {
            Some(_) => self.json(PREPROCESSOR_FILE),
            None => Ok(PreprocessorConfig::default()),
        }
    }

    /// Parses config.json into the model's config struct.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        self.json(CONFIG_FILE)
    }

    /// The first entry of `architectures` in config.json (or its `model_type`).
    pub fn architecture(&self) -> Result<String> {
        let header: ArchitectureHeader = self.config()?;
        Ok(header
            .architectures
            .into_iter()
            .next()
            .or(header.model_type)
            .unwrap_or_else(|| "unknown".into()))
    }

    /// Fails with [`Error::WrongArchitecture`] unless config.json names one of `expected`.
    pub fn expect_architecture(&self, expected: &[&str]) -> Result<()> {
        let found = self.architecture()?;
        if expected.contains(&found.as_str()) {
            Ok(())
        } else {
            Err(Error::WrongArchitecture {
                model: self.name.clone(),
                found,
                expected: expected.join(" or "),
            })
        }
    }

    /// The weights file: `model.safetensors`, else `pytorch_model.bin`.
    pub fn weights_path(&self) -> Result<PathBuf> {
        self.file(SAFETENSORS_FILE)
            .or_else(|| self.file(PYTORCH_FILE))
            .ok_or_else(|| Error::MissingFile {
                dir: self.dir.clone(),
                what: format!("weights ({SAFETENSORS_FILE} or {PYTORCH_FILE})"),
            })
    }

    /// The weights, converted to `options.dtype` on `options.device`, for layers on
    /// `options.kernels`.
    pub fn model_vars(&self, options: &LoadOptions) -> Result<ModelVars<'static>> {
        let (dtype, device) = (options.dtype, &options.device);
        let path = self.weights_path()?;
        let weights_err = |source| Error::Weights {
            model: self.name.clone(),
            path: path.clone(),
            source: Box::new(source),
        };
        let vb = if path.extension().is_some_and(|e| e == "safetensors") {
            // Read tensor by tensor, not memory-mapped: a mapping stays resident beside the
            // loaded copies (peak RSS twice the weights).
            let file = SafetensorsFile::open(&path).map_err(weights_err)?;
            VarBuilder::from_backend(Box::new(file), dtype, device.clone())
        } else {
            VarBuilder::from_pth(&path, dtype, device).map_err(weights_err)?
        };
        Ok(ModelVars::new(vb, options.kernels))
    }

    /// Maps an error raised while building a model from this checkpoint: a candle error (a
    /// missing tensor, a shape that does not match config.json) becomes [`Error::Weights`]
    /// naming the checkpoint; configuration errors pass through.
    pub fn load_error(&self, err: Error) -> Error {
        match err {
            Error::Candle(source) => Error::Weights {
                model: self.name.clone(),
                path: self.weights_path().unwrap_or_else(|_| self.dir.clone()),
                source,
            },
            other => other,
        }
    }
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The hub cache folder, honouring HF_HUB_CACHE and HF_HOME like huggingface_hub does.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface").join("hub")
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// Looks `id@revision` up in the cache; downloads it on a miss (unless HF_HUB_OFFLINE is set).
/// Returns the snapshot directory.
fn resolve_hub(id: &str, revision: &str) -> Result<PathBuf> {
    let cache_dir = hub_cache_dir();
    let cache = Cache::new(cache_dir.clone());
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    let repo_dir = cache_dir.join(repo.folder_name());
    if let Some(config) = cached_file(&cache, &repo, &repo_dir, revision, CONFIG_FILE) {
        if let Some(dir) = config.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    let not_cached = |reason: String| Error::ModelNotCached {
        id: if revision == "main" {
            id.to_string()
        } else {
            format!("{id}@{revision}")
        },
        cache: repo_dir.clone(),
        reason,
    };
    if hub_offline() {
        return Err(not_cached("HF_HUB_OFFLINE is set".into()));
    }
    let api = ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| not_cached(e.to_string()))?;
    let api_repo = api.repo(repo);
    let config = api_repo
        .get(CONFIG_FILE)
        .map_err(|e| not_cached(e.to_string()))?;
    api_repo
        .get(SAFETENSORS_FILE)
        .or_else(|_| api_repo.get(PYTORCH_FILE))
        .map_err(|e| not_cached(format!("no weights: {e}")))?;
    for name in OPTIONAL_FILES {
        // Repos ship only some of these (e.g. tokenizer.json or vocab files); a 404 is fine.
        if let Err(err) = api_repo.get(name) {
            tracing::debug!(model = id, file = name, %err, "optional file not fetched");
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| not_cached("bad cache path".into()))
}

/// A cached file for a branch/tag revision (through `refs/`), or for a commit hash revision
/// (straight from `snapshots/<hash>/`).
fn cached_file(
    cache: &Cache,
    repo: &Repo,
    repo_dir: &Path,
    revision: &str,
    name: &str,
) -> Option<PathBuf> {
    cache.repo(repo.clone()).get(name).or_else(|| {
        let p = repo_dir.join("snapshots").join(revision).join(name);
        p.is_file().then_some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_is_reported_as_such() {
        let err = Checkpoint::resolve("./no/such/model").unwrap_err();
        assert!(matches!(err, Error::ModelDirMissing(_)), "{err}");
    }
}
