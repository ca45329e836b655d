//! `ptuning eval`: metrics of a trained adapter on a labelled split.

use std::path::PathBuf;

use clap::Args;

use crate::engine::device::Compute;
use crate::error::Result;
use crate::tasks::Split;
use crate::training::adapter::Adapter;
use crate::training::data::split_file;

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

pub fn run(args: EvalArgs, compute: Compute) -> Result<()> {
    let mut adapter = Adapter::load(&args.run, args.model.as_deref())?;
    adapter.model.use_compute(compute)?;
    let path = if args.data.is_dir() {
        split_file(&adapter.config, &args.data, args.split.parse::<Split>()?)?
    } else {
        args.data.clone()
    };
    let data = adapter.data_for(&path)?;
    let metrics = data.evaluate_dev(&adapter.model, args.batch_size)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&metrics).expect("metrics serialize")
        );
    } else {
        println!(
            "{} on {}: {}",
            adapter.info.task,
            path.display(),
            data.describe_dev()
        );
        for (k, v) in &metrics {
            println!("{k:>20}  {v:.4}");
        }
    }
    Ok(())
}
