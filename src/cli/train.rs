//! `ptuning train`: flags and an optional run.toml into a TrainConfig, then the
//! training loop.

use std::path::PathBuf;

use clap::Args;

use crate::engine::device::Compute;
use crate::error::Result;
use crate::model::prefix::PromptMethod;
use crate::training::multitask::TaskSource;
use crate::training::trainer::{train, TrainConfig, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML file with the same fields as the flags (snake_case); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// superglue/{boolq,cb,copa,rte,wic,wsc,multirc}, glue/{cola,sst2,mrpc,rte,qnli,qqp,mnli,stsb}, custom/classification.
    #[arg(long)]
    task: Option<String>,
    /// The task's data folder (e.g. ../shared/data/superglue/CB).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Multi-task: TASK=DATA_DIR,... sharing one prompt, a head each (instead
    /// of --task and --data); best/<task>/ holds each task's adapter.
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<TaskSource>>,
    /// The run folder to create (or to continue with --resume).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Backbone: a model folder or a hub id in the local HF cache.
    #[arg(long)]
    model: Option<String>,
    /// p-tuning-v2 (deep prompts at every layer, the default) or
    /// prompt-tuning (the shallow baseline: P embeddings in front of the input).
    #[arg(long)]
    method: Option<PromptMethod>,
    /// P, the number of virtual tokens.
    #[arg(long)]
    prefix_len: Option<usize>,
    /// Reparameterize the prefix through an MLP (folded into a table on export).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    prefix_projection: Option<bool>,
    #[arg(long)]
    prefix_hidden_size: Option<usize>,
    /// Layers with a prefix: all, a range 0-5, a list 0,3,5, or top:k.
    #[arg(long)]
    prefix_layers: Option<String>,
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    eval_batch_size: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Dropout of the prefix and of the backbone's hidden states.
    #[arg(long)]
    dropout: Option<f32>,
    #[arg(long)]
    max_seq_len: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long)]
    warmup_ratio: Option<f32>,
    /// Clip gradients to this global norm (0 disables).
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Stop after this many epochs without a better dev metric.
    #[arg(long)]
    patience: Option<usize>,
    /// linear (to 0, per step), exp (×gamma per epoch) or constant.
    #[arg(long)]
    scheduler: Option<String>,
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

impl TrainArgs {
    /// The run.toml (or the defaults), overridden by every flag given.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
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
            prefix_layers
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
        Ok(c)
    }
}

pub fn run(args: TrainArgs, compute: Compute) -> Result<()> {
    let config = args.config()?;
    train(
        &config,
        TrainOptions {
            resume: args.resume,
            quiet: args.quiet,
            stop_after_epoch: args.stop_after_epoch,
            compute,
        },
    )?;
    Ok(())
}
