//! Resolving a --model argument to a local HF model folder.
//!
//! This machine works offline, so nothing is downloaded: a model is either a
//! folder given by path, the default model in the ptuning cache, or a model
//! that the `huggingface_hub` library already downloaded into its cache, whose
//! layout is `models--{org}--{name}/refs/main` (a commit hash) and
//! `models--{org}--{name}/snapshots/{hash}/` (the files).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The model used when none is given: a 6-layer, H = 384 BERT.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// The default model's full hub id.
const DEFAULT_MODEL_HUB_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Where models are looked for. Taking this explicitly (instead of reading
/// the environment inside the resolver) keeps tests independent of the
/// process environment, which parallel tests share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubPaths {
    /// ptuning's own cache: `$PTUNING_CACHE`, default `~/.cache/ptuning`.
    /// The default model lives in `models/all-MiniLM-L6-v2` under it.
    pub ptuning_cache: PathBuf,
    /// The HF hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub hf_hub_cache: PathBuf,
}

impl HubPaths {
    /// The paths from the environment, with the HF library's precedence:
    /// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE` (legacy), `HF_HOME/hub`,
    /// `XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        let hf_hub_cache = env_path("HF_HUB_CACHE")
            .or_else(|| env_path("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| env_path("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| env_path("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
            .unwrap_or_else(|| home_dir().join(".cache").join("huggingface").join("hub"));
        HubPaths {
            ptuning_cache: ptuning_cache(),
            hf_hub_cache,
        }
    }

    /// Folder of the default model in the ptuning cache.
    pub fn default_model_dir(&self) -> PathBuf {
        self.ptuning_cache.join("models").join(DEFAULT_MODEL)
    }

    /// Folder of hub repo `id` (`org/name` or `name`) in the HF cache.
    pub fn hf_repo_dir(&self, id: &str) -> PathBuf {
        self.hf_hub_cache
            .join(format!("models--{}", id.replace('/', "--")))
    }
}

/// The ptuning cache folder of the default model:
/// `$PTUNING_CACHE/models/all-MiniLM-L6-v2`, default
/// `~/.cache/ptuning/models/all-MiniLM-L6-v2`.
pub fn default_model_dir() -> PathBuf {
    ptuning_cache().join("models").join(DEFAULT_MODEL)
}

/// Resolves a --model argument using the paths from the environment; see
/// [`resolve_model_in`].
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    resolve_model_in(arg, &HubPaths::from_env())
}

/// Resolves a --model argument to a folder, in this order:
/// 1. an existing directory, used as is;
/// 2. `all-MiniLM-L6-v2` or `sentence-transformers/all-MiniLM-L6-v2`: the
///    ptuning cache copy, if present;
/// 3. a hub id `org/name` or `name`: the snapshot of `refs/main` in the HF
///    cache, or the newest snapshot if `refs/main` is missing or stale.
///
/// Otherwise fails with [`Error::ModelNotFound`] (or an I/O "not found" error
/// when the argument is clearly a path rather than a hub id).
pub fn resolve_model_in(arg: &str, paths: &HubPaths) -> Result<PathBuf> {
    let as_path = Path::new(arg);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if as_path.exists() {
        return Err(Error::InvalidArgument(format!(
            "--model {arg:?} is a file; expected a model folder (with config.json, \
             model.safetensors and tokenizer.json) or a hub id"
        )));
    }

    let is_default = arg == DEFAULT_MODEL || arg == DEFAULT_MODEL_HUB_ID;
    if is_default {
        let dir = paths.default_model_dir();
        if dir.is_dir() {
            return Ok(dir);
        }
    }

    if !is_hub_id(arg) {
        return Err(Error::io(
            as_path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "model folder does not exist (and this is not a hub id of the form org/name)",
            ),
        ));
    }

    let mut ids = vec![arg.to_string()];
    if arg == DEFAULT_MODEL {
        ids.push(DEFAULT_MODEL_HUB_ID.to_string());
    }
    for id in &ids {
        if let Some(dir) = snapshot_dir(&paths.hf_repo_dir(id)) {
            return Ok(dir);
        }
    }
    Err(Error::ModelNotFound {
        id: arg.to_string(),
        cache: paths.hf_repo_dir(&ids[ids.len() - 1]),
    })
}

/// The snapshot folder of a cached repo: `snapshots/{refs/main}` if it
/// exists, else the most recently modified snapshot.
fn snapshot_dir(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let hash = hash.trim();
        if !hash.is_empty() && !hash.contains(['/', '\\']) {
            let dir = snapshots.join(hash);
            if dir.is_dir() {
                return Some(dir);
            }
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| {
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            (mtime, e.file_name(), e.path())
        })
        .max()
        .map(|(_, _, path)| path)
}

/// `name` or `org/name`, each part of ASCII letters, digits, `-`, `_`, `.`,
/// not starting with `.` (so `./x` and `../x` are paths, not ids).
fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

fn ptuning_cache() -> PathBuf {
    env_path("PTUNING_CACHE").unwrap_or_else(|| home_dir().join(".cache").join("ptuning"))
}

/// A non-empty environment variable as a path.
fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home_dir() -> PathBuf {
    env_path("HOME")
        .or_else(|| env_path("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."))
}
