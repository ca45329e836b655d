//! `ptuning eval`: metrics of a trained adapter on a labelled split.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::tasks::features::featurize;
use crate::tasks::Split;
use crate::training::adapter::Adapter;
use crate::training::evaluate::evaluate;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint folder (runs/x/best) or a run folder.
    #[arg(long)]
    run: PathBuf,
    /// The task's data folder, or one data file.
    #[arg(long)]
    data: PathBuf,
    /// Which split of a data folder: train, val (dev) or test.
    #[arg(long, default_value = "val")]
    split: String,
    /// Override the backbone location (its weights must match the adapter's).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print one JSON object of metrics.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let adapter = Adapter::load(&args.run, args.model.as_deref())?;
    let path = if args.data.is_dir() {
        adapter
            .task
            .split_path(&args.data, args.split.parse::<Split>()?)
    } else {
        args.data.clone()
    };
    let examples = adapter.task.read(&path)?;
    let features = featurize(
        &adapter.backbone.tokenizer,
        &examples,
        adapter.info.tokenizer.max_seq_len,
    )?;
    let metrics = evaluate(
        &adapter.model,
        adapter.task.as_ref(),
        &examples,
        &features.features,
        args.batch_size,
        adapter.backbone.tokenizer.pad_id(),
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&metrics).expect("metrics serialize")
        );
    } else {
        println!(
            "{} on {} ({} examples, {} truncated)",
            adapter.info.task,
            path.display(),
            examples.len(),
            features.truncated
        );
        for (k, v) in &metrics {
            println!("{k:>16}  {v:.4}");
        }
    }
    Ok(())
}
