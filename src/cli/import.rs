//! `ptuning import`: a PEFT prefix-tuning or prompt-tuning adapter as a
//! ptuning checkpoint.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::training::peft::{import_peft, ImportOptions};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    peft: PathBuf,
    /// The checkpoint folder to write (for eval, predict and serve).
    #[arg(long)]
    out: PathBuf,
    /// The backbone (default: the adapter's base_model_name_or_path).
    #[arg(long)]
    model: Option<String>,
    /// The task the head was trained for (default: custom/classification).
    #[arg(long)]
    task: Option<String>,
    /// Label names in logit order, comma-separated (default: the task's, else 0..C-1).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Tokens per input at inference (PEFT does not record it) [default: 128,
    /// at most what the model's positions leave after the prompt].
    #[arg(long)]
    max_seq_len: Option<usize>,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let info = import_peft(
        &args.peft,
        &args.out,
        &ImportOptions {
            model: args.model,
            task: args.task,
            labels: args.labels,
            max_seq_len: args.max_seq_len,
        },
    )?;
    eprintln!(
        "wrote checkpoint {} ({}, {:?} head, labels {:?}, {} prompt of {} on backbone {}, \
         inputs of up to {} tokens: --max-seq-len)",
        args.out.display(),
        info.task,
        info.head,
        info.label_names,
        info.prefix.method.name(),
        info.prefix.len,
        info.backbone.name_or_path,
        info.tokenizer.max_seq_len
    );
    Ok(())
}
