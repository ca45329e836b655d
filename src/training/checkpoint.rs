//! A run's checkpoint folders (`best/`, `last/`): what they hold, and how they
//! are written so that a crash at any moment leaves a complete checkpoint.
//!
//! Contents:
//! - `adapter_model.safetensors` and `adapter_config.json`: the adapter in
//!   PEFT's PREFIX_TUNING layout, so `PeftModel.from_pretrained` can load it.
//!   The prefix is stored folded (`prompt_embeddings` [P, Ls*2*H], the MLP of a
//!   reparameterized prefix applied once), because PEFT saves prompt-learning
//!   adapters that way and needs no MLP at inference. The head is a
//!   `modules_to_save` module of PEFT's sequence-classification wrapper, which
//!   PEFT stores (and, on load, requires) under the wrapper's module path:
//!   `base_model.classifier.weight` `[C, H]` and `base_model.classifier.bias` `[C]`.
//!   PEFT prefixes every layer, so an adapter whose prefix covers only some
//!   layers (Ls < L) keeps `num_layers` = L and PEFT refuses it with a size
//!   mismatch rather than silently misplacing the layers; ptuning reads it fine.
//! - `ptuning.json` ([`RunInfo`]): what PEFT's config cannot say: the task, the
//!   labels, the prefixed layers, the backbone's weights hash, the training flags.
//! - `last/` only: `training_state.safetensors` (every trainable parameter
//!   unfolded under its [`Param`] name, plus the AdamW moments as
//!   `adamw.m.<name>` / `adamw.v.<name>`) and `trainer_state.json`
//!   ([`TrainerState`]), which together make a resumed run bit-identical to an
//!   uninterrupted one.
//!
//! Atomicity: everything is written into a sibling `<dir>.tmp-<pid>`, synced,
//! then swapped in with two renames (`<dir>` → `<dir>.old-<pid>`, tmp → `<dir>`)
//! and the old folder removed. [`recover_checkpoint_dir`] (run by every save,
//! and by the trainer at start-up) repairs what a crash can leave: if `<dir>`
//! is missing but an `.old-*` sibling exists (a crash between the renames), the
//! old checkpoint is restored; other leftovers are removed. A run folder
//! belongs to one training process at a time, so leftovers of any pid are
//! treated as stale. [`load_checkpoint`] only reads (falling back to the
//! `.old-*` folder), so `predict` on a run still training cannot undo a save.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::{sync_dir, write_atomic};
use crate::error::{Error, Result};
use crate::model::heads::{ClassificationHead, HeadKind};
use crate::model::param::Param;
use crate::model::prefix::{PrefixConfig, PrefixEncoder, PrefixLinear, PromptInit, PromptMethod};
use crate::model::weights::{save_tensors, WeightFile};
use crate::training::adamw::{AdamW, AdamWConfig, Moments};
use crate::training::run_files::{self, SWEEP_FILE, TABLE_FILE};

/// The adapter weights, PEFT's file name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config, PEFT's file name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// Our metadata.
pub const RUN_INFO: &str = "ptuning.json";
/// Unfolded parameters and optimizer moments (`last/` only).
pub const TRAINING_STATE: &str = "training_state.safetensors";
/// Loop counters and early-stopping state (`last/` only).
pub const TRAINER_STATE: &str = "trainer_state.json";
/// The `ptuning.json` layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The folded prefix table in the adapter, PEFT's name.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";
/// The head's weight in the adapter, where PEFT's `modules_to_save` puts it.
pub const ADAPTER_HEAD_WEIGHT: &str = "base_model.classifier.weight";
/// The head's bias in the adapter.
pub const ADAPTER_HEAD_BIAS: &str = "base_model.classifier.bias";

/// The weights file of a model folder, hashed by [`weights_hash`].
const MODEL_WEIGHTS: &str = "model.safetensors";

/// The frozen encoder an adapter was trained on. The prefix and head only make
/// sense with these exact weights, hence the hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneInfo {
    /// The `--model` given for training (hub id or folder).
    pub name_or_path: String,
    /// `model_type` of config.json.
    pub model_type: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// [`weights_hash`] of the backbone's model.safetensors.
    pub weights_hash: String,
}

/// How inputs were tokenized; inference must do the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub max_seq_len: usize,
    /// The truncation strategy for text pairs ("longest_first").
    pub truncation: String,
}

/// The prefix as trained (before folding), mirroring [`PrefixConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixInfo {
    /// Absent in files written before prompt tuning existed: P-Tuning v2.
    #[serde(default)]
    pub method: PromptMethod,
    pub len: usize,
    pub projection: bool,
    pub hidden_size: usize,
    pub layers: Vec<usize>,
}

impl From<&PrefixConfig> for PrefixInfo {
    fn from(c: &PrefixConfig) -> Self {
        PrefixInfo {
            method: c.method,
            len: c.len,
            projection: c.projection,
            hidden_size: c.hidden_size,
            layers: c.layers.clone(),
        }
    }
}

impl From<&PrefixInfo> for PrefixConfig {
    fn from(p: &PrefixInfo) -> Self {
        PrefixConfig {
            method: p.method,
            len: p.len,
            projection: p.projection,
            hidden_size: p.hidden_size,
            layers: p.layers.clone(),
        }
    }
}

/// `ptuning.json`: everything needed to use the adapter besides its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// [`FORMAT_VERSION`]; a file of another version is refused, not guessed at.
    pub format_version: u32,
    /// The task name (sst2, rte, ...).
    pub task: String,
    pub head: HeadKind,
    /// Label names in logit order; empty for regression and multiple choice.
    pub label_names: Vec<String>,
    pub backbone: BackboneInfo,
    pub tokenizer: TokenizerInfo,
    pub prefix: PrefixInfo,
    /// Every training flag, as the trainer saw them.
    pub hyperparameters: serde_json::Value,
    /// `"ptuning <version>"`, see [`created_by`].
    pub created_by: String,
}

/// The `created_by` value of this build.
pub fn created_by() -> String {
    format!("ptuning {}", env!("CARGO_PKG_VERSION"))
}

/// `trainer_state.json`: the loop's position and early-stopping state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Epochs fully done; a resumed run starts at this index.
    pub epoch_completed: usize,
    /// Batches trained so far (drives the LR schedule).
    pub global_step: u64,
    /// AdamW's step count t; must equal the optimizer's own.
    pub adamw_step: u64,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_improvement: usize,
    pub seed: u64,
    /// One entry per finished epoch (loss, metrics), for the summary and curve.
    pub history: Vec<serde_json::Value>,
}

/// What [`save_checkpoint`] writes, borrowed from the trainer.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointRef<'a> {
    pub info: &'a RunInfo,
    pub prefix: &'a PrefixEncoder,
    pub head: &'a ClassificationHead,
    /// The optimizer and loop state; `Some` for `last/`, `None` for `best/`.
    pub training: Option<(&'a AdamW, &'a TrainerState)>,
}

/// AdamW's state without its hyper-parameters (those come from the flags).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    /// In parameter order (prefix, then head); empty before the first step.
    pub moments: Vec<Moments>,
}

impl OptimizerState {
    /// An optimizer that continues exactly where the saved one stopped.
    pub fn into_adamw(self, config: AdamWConfig) -> AdamW {
        AdamW {
            config,
            step: self.step,
            moments: self.moments,
        }
    }
}

/// A loaded checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub info: RunInfo,
    /// The trained prefix: with its MLP when the folder has a training state,
    /// otherwise the folded plain table (`config.projection == false`).
    pub prefix: PrefixEncoder,
    pub head: ClassificationHead,
    pub training: Option<(OptimizerState, TrainerState)>,
}

/// The checkpoint folder of `run_dir`: itself when it holds `ptuning.json`,
/// else its `best/`, else its `last/` (as `ptuning eval` reads a run).
pub fn checkpoint_dir(run_dir: &Path) -> Result<PathBuf> {
    for dir in [
        run_dir.to_path_buf(),
        run_dir.join("best"),
        run_dir.join("last"),
    ] {
        if dir.join(RUN_INFO).is_file() {
            return Ok(dir);
        }
    }
    let tasks = task_adapters(run_dir);
    if !tasks.is_empty() {
        let dirs: Vec<String> = tasks.iter().map(|(_, d)| d.display().to_string()).collect();
        return Err(Error::InvalidArgument(format!(
            "{} is a multi-task run with an adapter per task: pass one of {}",
            run_dir.display(),
            dirs.join(", ")
        )));
    }
    if run_dir.join(SWEEP_FILE).is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is a sweep's folder: pass one of its runs, <point>/seed=<s> inside it \
             ({TABLE_FILE} ranks the points; `ptuning sweep` again names the best run)",
            run_dir.display()
        )));
    }
    Err(Error::InvalidArgument(format!(
        "{} is not a checkpoint folder (no {RUN_INFO}, nor best/ or last/ holding one)",
        run_dir.display()
    )))
}

/// The adapters of a multi-task run folder, by task folder name, sorted:
/// its `best/<task>/` folders (none for any other folder).
pub fn task_adapters(run_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut tasks: Vec<(String, PathBuf)> = std::fs::read_dir(run_dir.join("best"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(RUN_INFO).is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    tasks.sort();
    tasks
}

/// Writes the checkpoint folder `dir` atomically as a whole (see the module
/// docs). Leftovers of an earlier crash next to `dir` are repaired first.
pub fn save_checkpoint(dir: &Path, ckpt: &CheckpointRef<'_>) -> Result<()> {
    validate(ckpt)?;
    save_atomically(dir, |tmp| write_contents(tmp, ckpt))
}

/// Writes the checkpoints of a multi-task run into `dir/<name>/`, one per
/// task, atomically as a whole: a resumed run must never find the tasks'
/// states from two different epochs.
pub fn save_checkpoint_set(dir: &Path, set: &[(&str, CheckpointRef<'_>)]) -> Result<()> {
    for (_, ckpt) in set {
        validate(ckpt)?;
    }
    save_atomically(dir, |tmp| {
        set.iter().try_for_each(|(name, ckpt)| {
            let sub = tmp.join(name);
            std::fs::create_dir(&sub).map_err(|e| Error::io(&sub, e))?;
            write_contents(&sub, ckpt)?;
            sync_dir(&sub);
            Ok(())
        })
    })
}

/// `write` fills a fresh sibling temp folder, which then replaces `dir`
/// (see the module docs); leftovers of an earlier crash are repaired first.
fn save_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    recover_checkpoint_dir(dir)?;
    let parent = parent_of(dir);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = sibling(dir, "tmp")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    swap_into_place(&tmp, dir)
}

/// The checkpoints in `dir`: itself, named "", when it is one (a
/// single-task run's last/), else each sub-folder holding one, by name (a
/// multi-task run's last/, see [`save_checkpoint_set`]). A folder a crash
/// left half-swapped is repaired first.
pub fn load_checkpoint_set(dir: &Path) -> Result<Vec<(String, Checkpoint)>> {
    recover_checkpoint_dir(dir)?;
    if dir.join(RUN_INFO).is_file() || !dir.is_dir() {
        return Ok(vec![(String::new(), load_checkpoint(dir)?)]);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.path().join(RUN_INFO).is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        return Err(missing(&dir.join(RUN_INFO)));
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let ckpt = load_checkpoint(&dir.join(&name))?;
            Ok((name, ckpt))
        })
        .collect()
}

/// Loads a checkpoint folder written by [`save_checkpoint`]. If `dir` is
/// missing because a save crashed (or is right now) between its two renames,
/// the previous checkpoint is read from its `.old-*` name. Loading never
/// renames or removes anything: a reader racing a trainer's save must not undo
/// that save; repairs are [`recover_checkpoint_dir`]'s job.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let found;
    let dir = if dir.exists() {
        dir
    } else {
        found = leftovers(dir)?.0.pop();
        found.as_deref().unwrap_or(dir)
    };
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir.to_path_buf(),
            message: "checkpoint folder not found".into(),
        });
    }
    let info: RunInfo = read_run_info(&dir.join(RUN_INFO))?;
    let hidden = info.backbone.hidden_size;
    let config = PrefixConfig::from(&info.prefix);
    validate_prefix_info(&info, &dir.join(RUN_INFO))?;
    let width = config.width(hidden);

    let adapter = open_required(dir, ADAPTER_WEIGHTS)?;
    let table = adapter.tensor(PROMPT_EMBEDDINGS, &[config.len, width])?;
    // Adapters written by other tools may keep the head under its bare name.
    let head = read_head(
        &adapter,
        &[
            (ADAPTER_HEAD_WEIGHT, ADAPTER_HEAD_BIAS),
            ("classifier.weight", "classifier.bias"),
        ],
        &info,
    )?;
    let folded = PrefixEncoder {
        config: PrefixConfig {
            projection: false,
            ..config.clone()
        },
        hidden,
        embedding: Param::new("prefix.embedding", &[config.len, width], table, true),
        trans: None,
    };

    let state_path = dir.join(TRAINING_STATE);
    let trainer_path = dir.join(TRAINER_STATE);
    if !state_path.exists() && !trainer_path.exists() {
        return Ok(Checkpoint {
            info,
            prefix: folded,
            head,
            training: None,
        });
    }
    let state = open_required(dir, TRAINING_STATE)?;
    let trainer: TrainerState = read_json(&trainer_path)?;
    let prefix = read_prefix(&state, config, hidden)?;
    let head = read_head(&state, &[("classifier.weight", "classifier.bias")], &info)?;
    let names: Vec<String> = prefix
        .params()
        .into_iter()
        .chain([&head.weight, &head.bias])
        .map(|p| p.name.clone())
        .collect();
    let shapes: Vec<Vec<usize>> = prefix
        .params()
        .into_iter()
        .chain([&head.weight, &head.bias])
        .map(|p| p.shape.clone())
        .collect();
    let moments = if state.has(&format!("adamw.m.{}", names[0])) {
        names
            .iter()
            .zip(&shapes)
            .map(|(name, shape)| {
                Ok(Moments {
                    m: state.tensor(&format!("adamw.m.{name}"), shape)?,
                    v: state.tensor(&format!("adamw.v.{name}"), shape)?,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let optimizer = OptimizerState {
        step: trainer.adamw_step,
        moments,
    };
    Ok(Checkpoint {
        info,
        prefix,
        head,
        training: Some((optimizer, trainer)),
    })
}

/// Repairs what an interrupted [`save_checkpoint`] of `dir` can leave behind:
/// restores `<dir>.old-*` when `<dir>` itself is missing, then removes every
/// other `<dir>.tmp-*` / `<dir>.old-*` sibling. Call it at start-up, before
/// deciding whether a run can resume.
pub fn recover_checkpoint_dir(dir: &Path) -> Result<()> {
    let (mut olds, tmps) = leftovers(dir)?;
    if !dir.exists() {
        if let Some(newest) = olds.pop() {
            std::fs::rename(&newest, dir).map_err(|e| Error::io(dir, e))?;
            sync_dir(&parent_of(dir));
        }
    }
    for stale in olds.into_iter().chain(tmps) {
        remove_any(&stale)?;
    }
    Ok(())
}

/// The `<dir>.old-*` siblings, oldest first, and the `<dir>.tmp-*` ones.
/// Normally there is at most one of each; if several old ones, the newest is
/// the last checkpoint that was complete.
fn leftovers(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let parent = parent_of(dir);
    let name = dir_name(dir)?;
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(Error::io(&parent, e)),
    };
    let (tmp_prefix, old_prefix) = (format!("{name}.tmp-"), format!("{name}.old-"));
    let mut olds = Vec::new();
    let mut tmps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&parent, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with(&old_prefix) {
            olds.push(entry.path());
        } else if file_name.starts_with(&tmp_prefix) {
            tmps.push(entry.path());
        }
    }
    olds.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    Ok((olds, tmps))
}

/// A hash of the backbone's `model.safetensors`, as 16 hex digits, so that an
/// adapter is never silently applied to other weights than it was trained on.
///
/// The bytes are read through a memory map and hashed as little-endian 64-bit
/// words with FNV-1a's mixing (xor, then multiply by the FNV-64 prime) in four
/// interleaved lanes, which keeps the CPU busy instead of waiting on one long
/// multiply chain; the tail bytes, the length and the lanes are then folded
/// together. Not cryptographic: it guards against mistakes, not attacks.
pub fn weights_hash(model_dir: &Path) -> Result<String> {
    let path = model_dir.join(MODEL_WEIGHTS);
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.clone(),
            message: "the backbone has no model.safetensors to hash".into(),
        },
        _ => Error::io(&path, e),
    })?;
    let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    if len == 0 {
        return Ok(format!("{:016x}", hash_bytes(&[])));
    }
    // SAFETY: read-only private map; like every mmap loader we assume the file
    // is not truncated while we read it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
    Ok(format!("{:016x}", hash_bytes(&map)))
}

/// The hash behind [`weights_hash`].
fn hash_bytes(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut lanes = [OFFSET, OFFSET ^ 1, OFFSET ^ 2, OFFSET ^ 3];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = (*lane ^ u64::from_le_bytes(word.try_into().unwrap())).wrapping_mul(PRIME);
        }
    }
    let mut h = OFFSET;
    for lane in lanes {
        for b in lane.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(PRIME);
        }
    }
    for &b in blocks.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    for b in (bytes.len() as u64).to_le_bytes() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h
}

/// Refuses to pair an adapter with a backbone whose weights differ from the
/// ones it was trained on, naming both.
pub fn check_backbone(info: &RunInfo, backbone_name: &str, hash: &str) -> Result<()> {
    if info.backbone.weights_hash.eq_ignore_ascii_case(hash) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the adapter was trained on backbone {:?} (weights hash {}), but the given backbone {:?} has weights hash {}; \
         a prefix and head only work with the exact weights they were trained against, so pass --model {:?} (or the same weights)",
        info.backbone.name_or_path,
        info.backbone.weights_hash,
        backbone_name,
        hash,
        info.backbone.name_or_path,
    )))
}

/// Reads `ptuning.json`, refusing any format version but ours.
pub fn read_run_info(path: &Path) -> Result<RunInfo> {
    let value: serde_json::Value = read_json(path)?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "format_version {v} is not supported: this build of {} reads version {FORMAT_VERSION} (the checkpoint was written by {})",
                    created_by(),
                    value.get("created_by").and_then(|c| c.as_str()).unwrap_or("an unknown program"),
                ),
            })
        }
        None => {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: "format_version is missing or not a number; not a ptuning checkpoint".into(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The PEFT `adapter_config.json` of `info` (keys sorted, as PEFT writes
/// them): PREFIX_TUNING for P-Tuning v2, PROMPT_TUNING for prompt tuning.
pub fn adapter_config(info: &RunInfo) -> serde_json::Value {
    let p = &info.prefix;
    let mut config = serde_json::json!({
        "auto_mapping": null,
        "base_model_name_or_path": info.backbone.name_or_path,
        "inference_mode": true,
        "modules_to_save": ["classifier"],
        "num_attention_heads": info.backbone.num_heads,
        "num_layers": info.backbone.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": p.len,
        "revision": null,
        "task_type": "SEQ_CLS",
        "token_dim": info.backbone.hidden_size,
    });
    let own = match p.method {
        PromptMethod::PTuningV2 => serde_json::json!({
            "encoder_hidden_size": if p.projection { p.hidden_size } else { info.backbone.hidden_size },
            "peft_type": "PREFIX_TUNING",
            "prefix_projection": false,
        }),
        // How the prompt started, for the record: the table is stored as
        // trained, and PEFT's init never runs on load (inference mode). TEXT
        // needs its text and a tokenizer named, or PEFT's config refuses it.
        PromptMethod::PromptTuning => {
            let init: PromptInit =
                serde_json::from_value(info.hyperparameters["prompt_init"].clone())
                    .ok()
                    .unwrap_or_default();
            let (text, tokenizer) = match &init {
                PromptInit::Text(text) => (
                    serde_json::json!(text),
                    serde_json::json!(info.backbone.name_or_path),
                ),
                _ => (serde_json::Value::Null, serde_json::Value::Null),
            };
            serde_json::json!({
                "peft_type": "PROMPT_TUNING",
                "prompt_tuning_init": init.peft_name(),
                "prompt_tuning_init_text": text,
                "tokenizer_kwargs": null,
                "tokenizer_name_or_path": tokenizer,
            })
        }
    };
    if let (Some(all), serde_json::Value::Object(own)) = (config.as_object_mut(), own) {
        all.extend(own);
    }
    config
}

/// Checks that what is about to be written is self-consistent, so a bad
/// checkpoint fails at save time rather than at resume time.
fn validate(ckpt: &CheckpointRef<'_>) -> Result<()> {
    let info = ckpt.info;
    let bad = |why: String| {
        Err(Error::InvalidArgument(format!(
            "cannot save checkpoint: {why}"
        )))
    };
    if info.format_version != FORMAT_VERSION {
        return bad(format!(
            "RunInfo.format_version is {}, expected {FORMAT_VERSION}",
            info.format_version
        ));
    }
    if PrefixInfo::from(&ckpt.prefix.config) != info.prefix {
        return bad(format!(
            "RunInfo.prefix {:?} does not describe the prefix {:?}",
            info.prefix, ckpt.prefix.config
        ));
    }
    if ckpt.prefix.hidden != info.backbone.hidden_size
        || ckpt.head.weight.shape[1] != info.backbone.hidden_size
    {
        return bad(format!(
            "backbone hidden size {} but prefix hidden {} and head input {}",
            info.backbone.hidden_size, ckpt.prefix.hidden, ckpt.head.weight.shape[1]
        ));
    }
    if let Some((opt, trainer)) = ckpt.training {
        if opt.step != trainer.adamw_step {
            return bad(format!(
                "TrainerState.adamw_step {} differs from the optimizer's step {}",
                trainer.adamw_step, opt.step
            ));
        }
        let n = ckpt.prefix.params().len() + 2;
        if !opt.moments.is_empty() && opt.moments.len() != n {
            return bad(format!(
                "the optimizer has moments for {} parameters, the model has {n}",
                opt.moments.len()
            ));
        }
    }
    Ok(())
}

/// Writes every file of the checkpoint into `dir` (a fresh temp folder).
fn write_contents(dir: &Path, ckpt: &CheckpointRef<'_>) -> Result<()> {
    let head = ckpt.head;
    let table = ckpt.prefix.fold().embedding;
    save_tensors(
        &dir.join(ADAPTER_WEIGHTS),
        &[
            (
                PROMPT_EMBEDDINGS.to_string(),
                table.shape.clone(),
                &table.value,
            ),
            (
                ADAPTER_HEAD_WEIGHT.to_string(),
                head.weight.shape.clone(),
                &head.weight.value,
            ),
            (
                ADAPTER_HEAD_BIAS.to_string(),
                head.bias.shape.clone(),
                &head.bias.value,
            ),
        ],
    )?;
    write_json(&dir.join(ADAPTER_CONFIG), &adapter_config(ckpt.info))?;
    write_json(&dir.join(RUN_INFO), ckpt.info)?;

    if let Some((opt, trainer)) = ckpt.training {
        let params: Vec<&Param> = ckpt
            .prefix
            .params()
            .into_iter()
            .chain([&head.weight, &head.bias])
            .collect();
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone(), p.value.as_slice()))
            .collect();
        for (p, mom) in params.iter().zip(&opt.moments) {
            for (kind, data) in [("m", &mom.m), ("v", &mom.v)] {
                if data.len() != p.value.len() {
                    return Err(Error::InvalidArgument(format!(
                        "cannot save checkpoint: AdamW {kind} of {} has {} values, the parameter {}",
                        p.name,
                        data.len(),
                        p.value.len()
                    )));
                }
                tensors.push((format!("adamw.{kind}.{}", p.name), p.shape.clone(), data));
            }
        }
        save_tensors(&dir.join(TRAINING_STATE), &tensors)?;
        write_json(&dir.join(TRAINER_STATE), trainer)?;
    }
    Ok(())
}

/// The two renames that replace `dir` by the complete `tmp`, then the removal
/// of the old folder. If the second rename fails the old folder is put back.
fn swap_into_place(tmp: &Path, dir: &Path) -> Result<()> {
    let parent = parent_of(dir);
    if dir.exists() {
        let old = sibling(dir, "old")?;
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        if let Err(e) = std::fs::rename(tmp, dir) {
            let _ = std::fs::rename(&old, dir);
            let _ = std::fs::remove_dir_all(tmp);
            return Err(Error::io(dir, e));
        }
        sync_dir(&parent);
        remove_any(&old)?;
    } else {
        std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
        sync_dir(&parent);
    }
    Ok(())
}

/// `<dir>.<kind>-<pid>`, next to `dir`.
fn sibling(dir: &Path, kind: &str) -> Result<PathBuf> {
    let name = dir_name(dir)?;
    Ok(parent_of(dir).join(format!("{name}.{kind}-{}", std::process::id())))
}

fn dir_name(dir: &Path) -> Result<String> {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: a checkpoint folder needs a name (like run/last)",
                dir.display()
            ))
        })
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads a JSON file; a missing file is named as part of the checkpoint, a
/// corrupt one reported with its line and column.
/// [`run_files::read_json`], a missing file named as a checkpoint's.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    run_files::read_json(path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => missing(path),
        e => e,
    })
}

fn missing(path: &Path) -> Error {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Error::MissingFile {
        path: path.to_path_buf(),
        message: format!(
            "checkpoint file {name} is missing; the folder is not a complete ptuning checkpoint"
        ),
    }
}

fn open_required(dir: &Path, name: &str) -> Result<WeightFile> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(missing(&path));
    }
    WeightFile::open(&path)
}

/// Checks the prefix description before shapes are derived from it, so that a
/// hand-edited `ptuning.json` gives a message instead of a panic.
fn validate_prefix_info(info: &RunInfo, path: &Path) -> Result<()> {
    let p = &info.prefix;
    let b = &info.backbone;
    let why = if p.len == 0 {
        Some("prefix.len is 0".to_string())
    } else if p.method == PromptMethod::PTuningV2 && p.layers.is_empty() {
        Some("prefix.layers is empty".to_string())
    } else if p.method == PromptMethod::PromptTuning && !p.layers.is_empty() {
        Some("prefix.layers must be empty for prompt tuning".to_string())
    } else if let Some(l) = p.layers.iter().find(|&&l| l >= b.num_layers) {
        Some(format!(
            "prefix layer {l} does not exist in a backbone of {} layers",
            b.num_layers
        ))
    } else if b.hidden_size == 0 {
        Some("backbone.hidden_size is 0".to_string())
    } else if p.projection && p.hidden_size == 0 {
        Some("prefix.hidden_size is 0 with projection".to_string())
    } else {
        None
    };
    match why {
        Some(message) => Err(Error::Config {
            path: path.to_path_buf(),
            message,
        }),
        None => Ok(()),
    }
}

/// The unfolded prefix from the training state, shapes checked against `config`.
fn read_prefix(state: &WeightFile, config: PrefixConfig, hidden: usize) -> Result<PrefixEncoder> {
    let p = config.len;
    let width = config.width(hidden);
    let param = |name: &str, shape: &[usize], decay: bool| -> Result<Param> {
        Ok(Param::new(name, shape, state.tensor(name, shape)?, decay))
    };
    let (embedding, trans) = if config.projection {
        let h = config.hidden_size;
        let t0 = PrefixLinear {
            weight: param("prefix.trans.0.weight", &[h, hidden], true)?,
            bias: param("prefix.trans.0.bias", &[h], false)?,
        };
        let t2 = PrefixLinear {
            weight: param("prefix.trans.2.weight", &[width, h], true)?,
            bias: param("prefix.trans.2.bias", &[width], false)?,
        };
        (
            param("prefix.embedding", &[p, hidden], true)?,
            Some((t0, t2)),
        )
    } else {
        (param("prefix.embedding", &[p, width], true)?, None)
    };
    Ok(PrefixEncoder {
        config,
        hidden,
        embedding,
        trans,
    })
}

/// The head under the first (weight, bias) name pair whose bias is present: C
/// comes from the bias, H from the backbone, and a classification head must
/// have one row per label.
fn read_head(
    file: &WeightFile,
    names: &[(&str, &str)],
    info: &RunInfo,
) -> Result<ClassificationHead> {
    let hidden = info.backbone.hidden_size;
    let (weight_name, bias_name) = names
        .iter()
        .copied()
        .find(|(_, b)| file.has(b))
        .unwrap_or(names[0]);
    let (bias, bias_shape) = file.tensor_f32(bias_name)?;
    let c = match bias_shape.as_slice() {
        [c] if *c > 0 => *c,
        _ => {
            let expected = match info.head {
                HeadKind::Classification | HeadKind::TokenClassification
                    if !info.label_names.is_empty() =>
                {
                    info.label_names.len()
                }
                HeadKind::QuestionAnswering => 2,
                _ => 1,
            };
            return Err(Error::ShapeMismatch {
                path: file.path().to_path_buf(),
                name: bias_name.into(),
                expected: vec![expected],
                found: bias_shape,
            });
        }
    };
    if matches!(
        info.head,
        HeadKind::Classification | HeadKind::TokenClassification
    ) && !info.label_names.is_empty()
        && c != info.label_names.len()
    {
        return Err(Error::ShapeMismatch {
            path: file.path().to_path_buf(),
            name: bias_name.into(),
            expected: vec![info.label_names.len()],
            found: bias_shape,
        });
    }
    let weight = file.tensor(weight_name, &[c, hidden])?;
    Ok(ClassificationHead {
        weight: Param::new("classifier.weight", &[c, hidden], weight, true),
        bias: Param::new("classifier.bias", &[c], bias, false),
        per_token: info.head.per_token(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let a: Vec<u8> = (0..100u8).collect();
        let h = hash_bytes(&a);
        for i in [0, 31, 32, 63, 99] {
            let mut b = a.clone();
            b[i] ^= 1;
            assert_ne!(hash_bytes(&b), h, "byte {i}");
        }
        assert_ne!(hash_bytes(&a[..99]), h);
        assert_ne!(hash_bytes(&[]), hash_bytes(&[0]));
        assert_eq!(hash_bytes(&a), h);
    }

    #[test]
    fn adapter_config_has_peft_fields() {
        let info = RunInfo {
            format_version: FORMAT_VERSION,
            task: "rte".into(),
            head: HeadKind::Classification,
            label_names: vec!["a".into(), "b".into()],
            backbone: BackboneInfo {
                name_or_path: "bert-base-cased".into(),
                model_type: "bert".into(),
                hidden_size: 768,
                num_layers: 12,
                num_heads: 12,
                weights_hash: "0".repeat(16),
            },
            tokenizer: TokenizerInfo {
                max_seq_len: 128,
                truncation: "longest_first".into(),
            },
            prefix: PrefixInfo {
                method: PromptMethod::PTuningV2,
                len: 20,
                projection: true,
                hidden_size: 512,
                layers: (0..12).collect(),
            },
            hyperparameters: serde_json::Value::Null,
            created_by: created_by(),
        };
        let c = adapter_config(&info);
        assert_eq!(c["peft_type"], "PREFIX_TUNING");
        assert_eq!(c["num_virtual_tokens"], 20);
        assert_eq!(c["token_dim"], 768);
        assert_eq!(c["num_layers"], 12);
        assert_eq!(c["encoder_hidden_size"], 512);
        assert_eq!(c["prefix_projection"], false);
        assert_eq!(c["modules_to_save"][0], "classifier");
    }
}
