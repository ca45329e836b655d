//! `ptuning train`: flags and an optional run.toml into a TrainConfig, then the
//! training loop.

use std::path::PathBuf;

use clap::Args;

use crate::engine::device::Compute;
use crate::error::Result;
use crate::model::prefix::{PromptInit, PromptMethod};
use crate::training::checkpoint::load_checkpoint_set;
use crate::training::multitask::TaskSource;
use crate::training::trainer::{train, TrainConfig, TrainOptions};

/// The settings of a run, shared by `train` and `sweep`.
#[derive(Args, Debug)]
pub struct SettingsArgs {
    /// A TOML file with the same fields as the flags (snake_case); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// superglue/{boolq,cb,copa,rte,wic,wsc,multirc}, glue/{cola,sst2,mrpc,rte,qnli,qqp,mnli,stsb},
    /// ner/{conll2003,wnut17,conll04}, srl/{conll05,conll12}, qa/{squad,squad_v2},
    /// custom/classification, custom/conll.
    #[arg(long)]
    task: Option<String>,
    /// The task's data folder (e.g. ../shared/data/superglue/CB).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Multi-task: TASK=DATA_DIR,... sharing one prompt, a head each (instead
    /// of --task and --data); best/<task>/ holds each task's adapter.
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<TaskSource>>,
    /// The run folder to create (train; or to continue with --resume), or the
    /// sweep's folder (sweep: a run folder per point and seed inside).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Backbone: a model folder or a hub id in the local HF cache.
    #[arg(long)]
    model: Option<String>,
    /// p-tuning-v2 (deep prompts at every layer, the default) or
    /// prompt-tuning (the shallow baseline: P embeddings in front of the input).
    #[arg(long)]
    method: Option<PromptMethod>,
    /// P, the number of virtual tokens [default: 16].
    #[arg(long)]
    prefix_len: Option<usize>,
    /// Reparameterize the prefix through an MLP (folded into a table on export).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    prefix_projection: Option<bool>,
    /// h, the reparameterization MLP's hidden width [default: 512].
    #[arg(long)]
    prefix_hidden_size: Option<usize>,
    /// Layers with a prefix: all, a range 0-5, a list 0,3,5, or top:k.
    #[arg(long)]
    prefix_layers: Option<String>,
    /// Where prompt tuning's prompt starts: vocab (word embeddings of tokens
    /// drawn from the vocabulary), random (N(0, 1)) or text:TEXT (the
    /// embeddings of TEXT's tokens, repeated to P), as PEFT's
    /// PromptTuningInit [default: vocab].
    #[arg(long)]
    prompt_init: Option<PromptInit>,
    /// AdamW's learning rate [default: 1e-2].
    #[arg(long)]
    lr: Option<f32>,
    /// Sequences per training step [default: 16].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Sequences per evaluation batch [default: 32].
    #[arg(long)]
    eval_batch_size: Option<usize>,
    /// Passes over the training data [default: 10; on --resume, the run's own].
    #[arg(long)]
    epochs: Option<usize>,
    /// Dropout of the prefix and of the backbone's hidden states [default: 0.1].
    #[arg(long)]
    dropout: Option<f32>,
    /// Tokens per sequence or window [default: 128, 384 for QA; at most what
    /// the model's positions leave after the prompt].
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Seeds the prompt, the head, the shuffles and the dropout masks [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// AdamW's decoupled weight decay, on weights only [default: 0].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Share of the steps spent warming the learning rate up [default: 0].
    #[arg(long)]
    warmup_ratio: Option<f32>,
    /// Clip gradients to this global norm (0 disables) [default: 1].
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Stop after this many epochs without a better dev metric.
    #[arg(long)]
    patience: Option<usize>,
    /// linear (to 0, per step), exp (×gamma per epoch) or constant [default: linear].
    #[arg(long)]
    scheduler: Option<String>,
    /// The exp scheduler's factor per epoch [default: 0.95].
    #[arg(long)]
    gamma: Option<f32>,
    /// Hold out this fraction of train as the dev split.
    #[arg(long)]
    dev_from_train: Option<f32>,
    /// QA: tokens shared by consecutive context windows.
    #[arg(long)]
    doc_stride: Option<usize>,
    /// SQuAD v2: answer nothing when null score − best span score exceeds this.
    #[arg(long)]
    null_score_diff_threshold: Option<f32>,
    /// custom/conll: 0-based column of the word.
    #[arg(long)]
    token_col: Option<usize>,
    /// custom/conll: 0-based column of the tag (default: the last).
    #[arg(long)]
    tag_col: Option<usize>,
    /// custom/classification: text columns, e.g. sentence1,sentence2.
    #[arg(long, value_delimiter = ',')]
    text_fields: Option<Vec<String>>,
    /// custom/classification: the label column.
    #[arg(long)]
    label_field: Option<String>,
    /// Start from a trained adapter's prompt (a checkpoint or run folder), and
    /// its head when the task and labels are the same: prompt transfer.
    #[arg(long)]
    init_from: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Continue the interrupted run in --out exactly where last/ stopped.
    #[arg(long)]
    resume: bool,
    /// Pause after this epoch (resumable with --resume; the schedule is unchanged).
    #[arg(long)]
    stop_after_epoch: Option<usize>,
    /// No progress or tables, only errors.
    #[arg(long)]
    quiet: bool,
}

impl SettingsArgs {
    /// The run.toml (or the defaults), overridden by every flag given.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        self.apply_flags(&mut c);
        Ok(c)
    }

    /// Every flag given, over `c`.
    fn apply_flags(&self, c: &mut TrainConfig) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone().into();
                }
            )*};
        }
        set!(
            task,
            data,
            out,
            model,
            method,
            prefix_len,
            prefix_projection,
            prefix_hidden_size,
            prefix_layers,
            prompt_init
        );
        set!(
            lr,
            batch_size,
            eval_batch_size,
            epochs,
            dropout,
            max_seq_len,
            seed,
            weight_decay
        );
        set!(
            warmup_ratio,
            max_grad_norm,
            patience,
            scheduler,
            gamma,
            dev_from_train,
            text_fields
        );
        set!(
            label_field,
            doc_stride,
            null_score_diff_threshold,
            token_col,
            tag_col,
            init_from,
            tasks
        );
    }
}

/// The settings of the run stored in `out`/last, if they can be read (else
/// the resume itself reports why).
fn stored_config(out: &std::path::Path) -> Option<TrainConfig> {
    let ckpts = load_checkpoint_set(&out.join("last")).ok()?;
    serde_json::from_value(ckpts.first()?.1.info.hyperparameters.clone()).ok()
}

pub fn run(args: TrainArgs, compute: Compute) -> Result<()> {
    // Absolute as the run stores them, so a rerun compares alike.
    let mut config = args.settings.config()?.with_absolute_paths()?;
    if let Some(stored) = args.resume.then(|| stored_config(&config.out)).flatten() {
        // Flags that would change a stored setting are not applied (only
        // the run's length may change): say so.
        // Without --epochs the run keeps its own length.
        if args.settings.epochs.is_none() {
            config.epochs = stored.epochs;
        }
        let mut asked = stored.clone();
        args.settings.apply_flags(&mut asked);
        let value = |c: TrainConfig| -> Result<serde_json::Value> {
            Ok(c.with_absolute_paths()?.to_json())
        };
        let (asked, stored) = (value(asked)?, value(stored)?);
        let ignored: Vec<String> = stored
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, v)| {
                !["epochs", "patience", "out"].contains(&key.as_str()) && asked[key] != **v
            })
            .map(|(key, _)| format!("--{}", key.replace('_', "-")))
            .collect();
        if !ignored.is_empty() {
            tracing::warn!(
                "--resume continues the run with its stored settings; ignoring {} (only --epochs and --patience apply)",
                ignored.join(", ")
            );
        }
    }
    super::signals::stop_training_on_signals()?;
    train(
        &config,
        TrainOptions {
            resume: args.resume,
            quiet: args.quiet,
            stop_after_epoch: args.stop_after_epoch,
            compute,
            stop: Some(&super::signals::STOP_TRAINING),
        },
    )?;
    Ok(())
}
