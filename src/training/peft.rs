//! Interchange with Hugging Face PEFT's prefix tuning (`PREFIX_TUNING`) and,
//! for prompt tuning adapters, its `PROMPT_TUNING`.
//!
//! A PEFT prefix adapter is a folder with
//! - `adapter_config.json`: `peft_type` PREFIX_TUNING, `num_virtual_tokens` P,
//!   `token_dim` H, `num_layers` L, `num_attention_heads`,
//!   `num_transformer_submodules` (1 for encoders), `encoder_hidden_size`,
//!   `prefix_projection`, `base_model_name_or_path`, `task_type`;
//! - `adapter_model.safetensors`: `prompt_embeddings` [P, L·2·H] (the folded
//!   table: PEFT applies a projection MLP before saving) and, for a sequence
//!   classifier, the head as a `modules_to_save` module,
//!   `base_model.classifier.weight` [C, H] / `base_model.classifier.bias` [C].
//!
//! Our checkpoint folders already hold exactly these two files (see
//! [`crate::training::checkpoint`]); [`export_peft`] copies them out, normalised
//! and checked, and [`import_peft`] builds a checkpoint folder (adding
//! `ptuning.json`) from a PEFT folder, checked against the backbone.
//!
//! PEFT puts a prefix on every layer: a ptuning adapter with a layer subset
//! (`--prefix-layers`) has no PEFT equivalent and is refused.
//!
//! A PROMPT_TUNING adapter has the same two files, its `prompt_embeddings`
//! [P, H] being the input embeddings of the P virtual tokens (no
//! `encoder_hidden_size` or `prefix_projection` in its config).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::heads::{ClassificationHead, HeadKind};
use crate::model::param::Param;
use crate::model::prefix::{PrefixConfig, PrefixEncoder, PromptInit, PromptMethod};
use crate::model::weights::{save_tensors, WeightFile};
use crate::tasks::{task_by_name, TaskKind, TaskOptions};
use crate::training::checkpoint::{
    adapter_config, checkpoint_dir, created_by, load_checkpoint, save_checkpoint, BackboneInfo,
    CheckpointRef, PrefixInfo, RunInfo, TokenizerInfo, ADAPTER_CONFIG, ADAPTER_HEAD_BIAS,
    ADAPTER_HEAD_WEIGHT, ADAPTER_WEIGHTS, FORMAT_VERSION, PROMPT_EMBEDDINGS,
};
use crate::training::data::Family;
use crate::training::run_files::is_occupied;
use crate::training::trainer::{Backbone, TrainConfig};

/// Where PEFT and other tools put a sequence classifier's head, tried in order.
pub const HEAD_NAMES: &[(&str, &str)] = &[
    (ADAPTER_HEAD_WEIGHT, ADAPTER_HEAD_BIAS),
    (
        "base_model.model.classifier.weight",
        "base_model.model.classifier.bias",
    ),
    ("classifier.weight", "classifier.bias"),
];

/// The prefix- or prompt-tuning fields of a PEFT `adapter_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftPrefixConfig {
    /// PREFIX_TUNING: P-Tuning v2; PROMPT_TUNING: prompt tuning.
    pub method: PromptMethod,
    pub task_type: Option<String>,
    pub num_virtual_tokens: usize,
    pub token_dim: usize,
    pub num_layers: usize,
    pub num_attention_heads: Option<usize>,
    pub num_transformer_submodules: usize,
    pub encoder_hidden_size: Option<usize>,
    pub prefix_projection: bool,
    pub base_model_name_or_path: Option<String>,
    /// How a PROMPT_TUNING prompt started (`prompt_tuning_init` and its
    /// text), for the record; `None` when the config does not say.
    pub prompt_init: Option<PromptInit>,
}

impl PeftPrefixConfig {
    /// Reads `adapter_config.json`, refusing anything but an encoder's
    /// PREFIX_TUNING or PROMPT_TUNING adapter with a clear reason.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: path.to_path_buf(),
                message: format!("{ADAPTER_CONFIG} is missing: not a PEFT adapter folder"),
            },
            _ => Error::io(path, e),
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_value(&v, path)
    }

    /// Parses the fields from a config's JSON; `path` names it in errors.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let method = match v.get("peft_type").and_then(Value::as_str) {
            Some("PREFIX_TUNING") => PromptMethod::PTuningV2,
            Some("PROMPT_TUNING") => PromptMethod::PromptTuning,
            _ => {
                return Err(bad(format!(
                    "peft_type is {}, not \"PREFIX_TUNING\" or \"PROMPT_TUNING\": only prefix-tuning adapters (P-Tuning v2's deep prompts) and prompt-tuning adapters can be imported",
                    v.get("peft_type").unwrap_or(&Value::Null)
                )))
            }
        };
        let count = |key: &str| -> Result<Option<usize>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(format!("{key} must be a non-negative integer, found {x}"))),
            }
        };
        let required = |key: &str| -> Result<usize> {
            match count(key)? {
                Some(n) if n > 0 => Ok(n),
                Some(_) => Err(bad(format!("{key} must be at least 1"))),
                None => Err(bad(format!("{key} is missing"))),
            }
        };
        let config = PeftPrefixConfig {
            method,
            task_type: v.get("task_type").and_then(Value::as_str).map(String::from),
            num_virtual_tokens: required("num_virtual_tokens")?,
            token_dim: required("token_dim")?,
            num_layers: required("num_layers")?,
            num_attention_heads: count("num_attention_heads")?,
            num_transformer_submodules: count("num_transformer_submodules")?.unwrap_or(1),
            encoder_hidden_size: count("encoder_hidden_size")?,
            prefix_projection: v
                .get("prefix_projection")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from),
            prompt_init: v
                .get("prompt_tuning_init")
                .and_then(Value::as_str)
                .and_then(|name| {
                    let text = v.get("prompt_tuning_init_text").and_then(Value::as_str);
                    PromptInit::from_peft(name, text)
                }),
        };
        if config.num_transformer_submodules != 1 {
            return Err(bad(format!(
                "num_transformer_submodules is {}: an encoder-decoder adapter; ptuning serves encoders (1)",
                config.num_transformer_submodules
            )));
        }
        Ok(config)
    }

    /// Columns of the prompt table: L·2·H, or H for prompt tuning.
    pub fn width(&self) -> usize {
        match self.method {
            PromptMethod::PTuningV2 => self.num_layers * 2 * self.token_dim,
            PromptMethod::PromptTuning => self.token_dim,
        }
    }
}

/// Writes the adapter of `run_dir` (a run or checkpoint folder) as a PEFT
/// prefix-tuning (or prompt-tuning) folder `out`: `adapter_config.json` and
/// `adapter_model.safetensors` (folded table and head). Returns the
/// checkpoint folder it read.
pub fn export_peft(run_dir: &Path, out: &Path) -> Result<PathBuf> {
    let dir = checkpoint_dir(run_dir)?;
    let ckpt = load_checkpoint(&dir)?;
    let info = &ckpt.info;
    let all: Vec<usize> = (0..info.backbone.num_layers).collect();
    if info.prefix.method == PromptMethod::PTuningV2 && info.prefix.layers != all {
        return Err(Error::InvalidArgument(format!(
            "{}: the prefix covers layers {:?} of the backbone's {}, but PEFT's prefix tuning puts a prefix on every layer, \
             so PEFT cannot load this adapter; train with --prefix-layers all to export it",
            dir.display(),
            info.prefix.layers,
            info.backbone.num_layers
        )));
    }
    if ckpt.head.per_token {
        return Err(Error::InvalidArgument(format!(
            "{}: a {:?} head has no PEFT sequence-classification equivalent",
            dir.display(),
            info.head
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let table = ckpt.prefix.fold().embedding;
    save_tensors(
        &out.join(ADAPTER_WEIGHTS),
        &[
            (
                PROMPT_EMBEDDINGS.to_string(),
                table.shape.clone(),
                &table.value,
            ),
            (
                ADAPTER_HEAD_WEIGHT.to_string(),
                ckpt.head.weight.shape.clone(),
                &ckpt.head.weight.value,
            ),
            (
                ADAPTER_HEAD_BIAS.to_string(),
                ckpt.head.bias.shape.clone(),
                &ckpt.head.bias.value,
            ),
        ],
    )?;
    // The table is stored folded: adapter_config says no projection MLP.
    let config = adapter_config(info);
    let mut text = serde_json::to_string_pretty(&config).expect("adapter config serializes");
    text.push('\n');
    let path = out.join(ADAPTER_CONFIG);
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(dir)
}

/// What the PEFT config cannot say, for [`import_peft`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The backbone (folder or hub id); default: `base_model_name_or_path`.
    pub model: Option<String>,
    /// The task (for `ptuning eval`/`predict` and the head kind); default:
    /// `custom/classification` for a head of C > 1 outputs.
    pub task: Option<String>,
    /// Label names in logit order; default: the task's, else "0".."C-1".
    pub labels: Option<Vec<String>>,
    /// Tokens per input at inference; default 128.
    pub max_seq_len: Option<usize>,
}

/// Reads a PEFT prefix-tuning folder and writes it as a ptuning checkpoint
/// folder `out` (`ptuning.json` added), checked against the backbone: its
/// hidden size, layer and head counts must match, and its weights hash is
/// recorded so that serve and eval refuse other weights.
pub fn import_peft(peft_dir: &Path, out: &Path, options: &ImportOptions) -> Result<RunInfo> {
    // The checkpoint replaces `out` whole: never a folder that holds something.
    if is_occupied(out) {
        return Err(Error::InvalidArgument(format!(
            "--out {} already exists and is not an empty folder; import writes a new \
             checkpoint folder: choose another --out",
            out.display()
        )));
    }
    let config = PeftPrefixConfig::read(&peft_dir.join(ADAPTER_CONFIG))?;
    let model = options
        .model
        .clone()
        .or_else(|| config.base_model_name_or_path.clone())
        .ok_or_else(|| {
            Error::InvalidArgument(
                "the adapter names no base_model_name_or_path; pass --model".into(),
            )
        })?;
    let backbone = Backbone::load(&model)?;
    let (info, prefix, head) = read_peft(peft_dir, &config, &backbone, &model, options)?;
    save_checkpoint(
        out,
        &CheckpointRef {
            info: &info,
            prefix: &prefix,
            head: &head,
            training: None,
        },
    )?;
    Ok(info)
}

/// The checkpoint parts of a PEFT folder, checked against `backbone`.
pub fn read_peft(
    peft_dir: &Path,
    config: &PeftPrefixConfig,
    backbone: &Backbone,
    model_name: &str,
    options: &ImportOptions,
) -> Result<(RunInfo, PrefixEncoder, ClassificationHead)> {
    let c = &backbone.model.config;
    let mismatch = |what: &str, peft: usize, ours: usize| {
        Err(Error::InvalidArgument(format!(
            "the adapter's {what} is {peft} but backbone {model_name:?} has {ours}; it was made for another model"
        )))
    };
    if config.token_dim != c.hidden_size {
        return mismatch("token_dim (hidden size)", config.token_dim, c.hidden_size);
    }
    if config.num_layers != c.num_hidden_layers {
        return mismatch("num_layers", config.num_layers, c.num_hidden_layers);
    }
    if let Some(nh) = config.num_attention_heads {
        if nh != c.num_attention_heads {
            return mismatch("num_attention_heads", nh, c.num_attention_heads);
        }
    }
    let weights_path = peft_dir.join(ADAPTER_WEIGHTS);
    if !weights_path.is_file() {
        return Err(Error::MissingFile {
            path: weights_path,
            message: format!(
                "{ADAPTER_WEIGHTS} is missing (adapter_model.bin is not read: re-save with safe_serialization=True)"
            ),
        });
    }
    let file = WeightFile::open(&weights_path)?;
    let p = config.num_virtual_tokens;
    let width = config.width();
    let Some(shape) = file.shape(PROMPT_EMBEDDINGS) else {
        return Err(Error::MissingTensor {
            path: weights_path,
            name: PROMPT_EMBEDDINGS.into(),
            tried: Vec::new(),
        });
    };
    if shape != [p, width] {
        if config.prefix_projection {
            return Err(Error::InvalidArgument(format!(
                "{}: prefix_projection is true and {PROMPT_EMBEDDINGS} is {shape:?}, not the folded table [{p}, {width}] \
                 (P, num_layers·2·token_dim); ptuning needs the table PEFT saves from a model in training mode \
                 (inference_mode false), which has the projection MLP applied",
                weights_path.display()
            )));
        }
        return Err(Error::ShapeMismatch {
            path: weights_path,
            name: PROMPT_EMBEDDINGS.into(),
            expected: vec![p, width],
            found: shape,
        });
    }
    let table = file.tensor(PROMPT_EMBEDDINGS, &[p, width])?;
    if let Some(i) = table.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "{}: {PROMPT_EMBEDDINGS} holds a non-finite value at {i}",
            weights_path.display()
        )));
    }
    let Some(&(weight_name, bias_name)) = HEAD_NAMES.iter().find(|(_, b)| file.has(b)) else {
        return Err(Error::InvalidArgument(format!(
            "{}: no classifier head (looked for {}); ptuning needs the head PEFT saves for a \
             sequence classifier (modules_to_save = [\"classifier\"])",
            weights_path.display(),
            HEAD_NAMES
                .iter()
                .map(|(_, b)| *b)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let (bias, bias_shape) = file.tensor_f32(bias_name)?;
    let outputs = match bias_shape.as_slice() {
        [n] if *n > 0 => *n,
        _ => {
            return Err(Error::ShapeMismatch {
                path: weights_path,
                name: bias_name.into(),
                expected: vec![1],
                found: bias_shape,
            })
        }
    };
    let weight = file.tensor(weight_name, &[outputs, c.hidden_size])?;

    // Task, head kind and labels.
    let task_name = match &options.task {
        Some(t) => t.clone(),
        None if outputs > 1 => "custom/classification".to_string(),
        None => {
            return Err(Error::InvalidArgument(
                "the head has 1 output (regression or multiple choice): pass --task to say which (e.g. glue/stsb, superglue/copa)".into(),
            ))
        }
    };
    if Family::of(&task_name) != Family::Sequence {
        return Err(Error::InvalidArgument(format!(
            "--task {task_name}: import takes sequence-level adapters (PEFT's SEQ_CLS: \
             classification, regression, multiple choice); tagging and QA heads do not \
             exchange with PEFT"
        )));
    }
    let task = task_by_name(
        &task_name,
        &TaskOptions {
            labels: options.labels.clone(),
            ..TaskOptions::default()
        },
    )?;
    let (kind, mut labels) = match task.kind() {
        TaskKind::Classification => (HeadKind::Classification, task.label_names()),
        TaskKind::MultipleChoice { .. } => (HeadKind::MultipleChoice, task.label_names()),
        TaskKind::Regression => (HeadKind::Regression, Vec::new()),
    };
    if let Some(given) = &options.labels {
        labels = given.clone();
    }
    if kind == HeadKind::Classification && labels.is_empty() {
        // No label names anywhere (custom/classification without --labels): indices.
        labels = (0..outputs).map(|i| i.to_string()).collect();
    }
    let expected = match kind {
        HeadKind::Classification => labels.len(),
        _ => 1,
    };
    if outputs != expected {
        return Err(Error::InvalidArgument(format!(
            "the head has {outputs} outputs but task {task_name} with labels {labels:?} needs {expected}"
        )));
    }

    // Tokens per input: what was asked, or 128, within what the model's
    // positions leave after the prompt.
    let room = c.tokens_after_prompt(p);
    let max_seq_len = match options.max_seq_len {
        Some(n) if n > room => {
            return Err(Error::InvalidArgument(format!(
                "--max-seq-len {n} with a prompt of {p} needs more than the model's {} positions: pass {room} or less",
                c.max_position_embeddings
            )))
        }
        Some(n) => n,
        None => 128.min(room),
    };
    let prefix_config = PrefixConfig {
        method: config.method,
        len: p,
        projection: false,
        hidden_size: config.encoder_hidden_size.unwrap_or(c.hidden_size),
        layers: match config.method {
            PromptMethod::PTuningV2 => (0..c.num_hidden_layers).collect(),
            PromptMethod::PromptTuning => Vec::new(),
        },
    };
    let hyperparameters = TrainConfig {
        task: task_name.clone(),
        model: model_name.to_string(),
        method: config.method,
        prefix_len: p,
        prompt_init: config.prompt_init.clone(),
        max_seq_len: Some(max_seq_len),
        ..TrainConfig::default()
    };
    let info = RunInfo {
        format_version: FORMAT_VERSION,
        task: task_name,
        head: kind,
        label_names: if kind == HeadKind::Regression {
            Vec::new()
        } else {
            labels
        },
        backbone: BackboneInfo {
            name_or_path: model_name.to_string(),
            model_type: c.model_type.as_str().to_string(),
            hidden_size: c.hidden_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            weights_hash: backbone.hash.clone(),
        },
        tokenizer: TokenizerInfo {
            max_seq_len,
            truncation: "longest_first".into(),
        },
        prefix: PrefixInfo::from(&prefix_config),
        hyperparameters: hyperparameters.to_json(),
        created_by: created_by(),
    };
    let prefix = PrefixEncoder {
        config: prefix_config,
        hidden: c.hidden_size,
        embedding: Param::new("prefix.embedding", &[p, width], table, true),
        trans: None,
    };
    let head = ClassificationHead {
        weight: Param::new("classifier.weight", &[outputs, c.hidden_size], weight, true),
        bias: Param::new("classifier.bias", &[outputs], bias, false),
        per_token: false,
    };
    Ok((info, prefix, head))
}
