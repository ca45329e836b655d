//! The adapters a server holds: each one's folded prefix table, head and the
//! facts a request is checked against, all sharing the server's one backbone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::config::BertConfig;
use crate::model::heads::{ClassificationHead, HeadKind};
use crate::model::prefix::{PrefixEncoder, PromptMethod};
use crate::training::checkpoint::{check_backbone, checkpoint_dir, load_checkpoint, RunInfo};

/// The longest adapter name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// One adapter ready to serve. The prefix is kept only as its folded table
/// `past` [P, Ls·2·H], computed once at load: a request never runs the
/// prefix encoder.
#[derive(Debug)]
pub struct ServedAdapter {
    pub name: String,
    /// The checkpoint folder it was read from (empty when built in memory).
    pub path: PathBuf,
    pub info: RunInfo,
    /// [P, Ls·2·H], or [P, H] for prompt tuning; a GPU keeps its copy of
    /// it while this `Arc` lives (engine/cuda/table_cache.rs).
    pub past: Arc<[f32]>,
    pub method: PromptMethod,
    pub prefix_len: usize,
    /// Prefixed layers, ascending.
    pub layers: Vec<usize>,
    pub head: ClassificationHead,
    /// Tokens per sequence, special tokens included: the length it was trained
    /// with, capped by the positions left after the prefix.
    pub max_len: usize,
}

/// Checks an adapter name: 1 to [`MAX_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`,
/// so that it is safe in a URL path and a metrics label.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "adapter name {name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        )))
    }
}

impl ServedAdapter {
    /// Reads the checkpoint of `run_dir` and checks that it was trained on
    /// this backbone (`backbone_name`, whose weights hash to `backbone_hash`).
    pub fn load(
        name: &str,
        run_dir: &Path,
        config: &BertConfig,
        backbone_name: &str,
        backbone_hash: &str,
    ) -> Result<Self> {
        validate_name(name)?;
        let dir = checkpoint_dir(run_dir)?;
        let ckpt = load_checkpoint(&dir)?;
        check_backbone(&ckpt.info, backbone_name, backbone_hash).map_err(|e| {
            Error::InvalidArgument(format!("adapter {name:?} ({}): {e}", dir.display()))
        })?;
        let mut adapter = Self::from_parts(name, ckpt.info, &ckpt.prefix, ckpt.head, config)?;
        adapter.path = dir;
        Ok(adapter)
    }

    /// An adapter from a prefix and a head in memory (tests, benchmarks). The
    /// shapes are checked against the backbone's `config`.
    pub fn from_parts(
        name: &str,
        info: RunInfo,
        prefix: &PrefixEncoder,
        head: ClassificationHead,
        config: &BertConfig,
    ) -> Result<Self> {
        validate_name(name)?;
        let h = config.hidden_size;
        let bad = |why: String| Err(Error::InvalidArgument(format!("adapter {name:?}: {why}")));
        if prefix.hidden != h || head.weight.shape.get(1) != Some(&h) {
            return bad(format!(
                "its prefix and head are {}-wide, the backbone's hidden size is {h}",
                prefix.hidden
            ));
        }
        if let Some(&l) = prefix
            .config
            .layers
            .iter()
            .find(|&&l| l >= config.num_hidden_layers)
        {
            return bad(format!(
                "prefix layer {l} does not exist in a backbone of {} layers",
                config.num_hidden_layers
            ));
        }
        let p = prefix.config.len;
        let past = prefix.forward().past;
        if p == 0 || past.len() != p * prefix.width() {
            return bad("its prompt table is empty or not [P, width]".into());
        }
        let positions = config.tokens_after_prompt(p);
        let max_len = info.tokenizer.max_seq_len.min(positions);
        if max_len < 3 {
            return bad(format!(
                "a prefix of {p} leaves {positions} positions of the model's {}",
                config.max_position_embeddings
            ));
        }
        Ok(ServedAdapter {
            name: name.to_string(),
            path: PathBuf::new(),
            method: prefix.config.method,
            prefix_len: p,
            layers: prefix.config.layers.clone(),
            info,
            past: Arc::from(past),
            head,
            max_len,
        })
    }

    pub fn kind(&self) -> HeadKind {
        self.info.head
    }

    /// Columns of `past`: Ls·2·H, or H for prompt tuning.
    pub fn width(&self) -> usize {
        self.past.len() / self.prefix_len
    }

    /// Whether two adapters' rows can share one forward: same P (the position
    /// shift) and the same prefixed layers.
    pub fn same_shape(&self, other: &ServedAdapter) -> bool {
        self.method == other.method
            && self.prefix_len == other.prefix_len
            && self.layers == other.layers
    }

    /// The listing entry: `GET /v1/adapters`.
    pub fn summary(&self) -> Value {
        json!({
            "name": self.name,
            "task": self.info.task,
            "head": self.info.head,
            "labels": self.info.label_names,
            "method": self.method,
            "prefix_len": self.prefix_len,
            "prefix_layers": self.layers,
            "max_len": self.max_len,
            "path": self.path.display().to_string(),
        })
    }
}

/// The loaded adapters by name.
#[derive(Debug, Default)]
pub struct Registry {
    adapters: RwLock<BTreeMap<String, Arc<ServedAdapter>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<ServedAdapter>> {
        self.read().get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Adds `adapter`; refuses a name already in use.
    pub fn insert(&self, adapter: ServedAdapter) -> Result<Arc<ServedAdapter>> {
        let mut map = self.write();
        if map.contains_key(&adapter.name) {
            return Err(Error::InvalidArgument(format!(
                "an adapter named {:?} is already loaded; unload it first",
                adapter.name
            )));
        }
        let adapter = Arc::new(adapter);
        map.insert(adapter.name.clone(), Arc::clone(&adapter));
        Ok(adapter)
    }

    /// Removes an adapter. Requests already queued for it still finish: they
    /// hold their own reference.
    pub fn remove(&self, name: &str) -> Option<Arc<ServedAdapter>> {
        self.write().remove(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<ServedAdapter>> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ServedAdapter>>> {
        self.adapters.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ServedAdapter>>> {
        self.adapters.write().unwrap_or_else(|e| e.into_inner())
    }
}
