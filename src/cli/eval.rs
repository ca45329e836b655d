//! `ptuning eval`: metrics of a trained adapter on a labelled split, or of
//! every task's adapter of a multi-task run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::tasks::Split;
use crate::training::adapter::Adapter;
use crate::training::checkpoint::task_adapters;
use crate::training::data::split_file;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint folder (runs/x/best), a run folder, or a multi-task
    /// run folder (each task's adapter on its own data).
    #[arg(long)]
    run: PathBuf,
    /// The task's data folder, or one data file; by default the folder the
    /// adapter was trained on.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which split of a data folder: train, val (dev) or test.
    #[arg(long, default_value = "val")]
    split: String,
    /// Override the backbone location (its weights must match the adapter's).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 32, value_parser = super::at_least_one)]
    batch_size: usize,
    /// Print one JSON object of metrics (for a multi-task run, one per task).
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs, compute: Compute) -> Result<()> {
    let tasks = task_adapters(&args.run);
    if tasks.is_empty() {
        let metrics = evaluate(&args.run, &args, compute)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&metrics).expect("metrics serialize")
            );
        }
        return Ok(());
    }
    if args.data.is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} is a multi-task run: each task is evaluated on the data it was trained on, \
             so --data applies to one task's adapter (--run {})",
            args.run.display(),
            tasks[0].1.display()
        )));
    }
    let mut all = BTreeMap::new();
    for (name, dir) in tasks {
        all.insert(name, evaluate(&dir, &args, compute)?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&all).expect("metrics serialize")
        );
    }
    Ok(())
}

/// The metrics of the adapter at `run` (printed unless --json).
fn evaluate(run: &Path, args: &EvalArgs, compute: Compute) -> Result<BTreeMap<String, f64>> {
    let mut adapter = Adapter::load(run, args.model.as_deref())?;
    adapter.model.use_compute(compute)?;
    let data_dir = match &args.data {
        Some(d) => d.clone(),
        None if adapter.config.data.exists() => adapter.config.data.clone(),
        None if adapter.config.data.as_os_str().is_empty() => {
            return Err(Error::InvalidArgument(format!(
                "pass --data: {} records no data folder (an imported adapter)",
                run.display()
            )))
        }
        None => {
            return Err(Error::InvalidArgument(format!(
                "pass --data: {} was trained on {}, which is not here",
                run.display(),
                adapter.config.data.display()
            )))
        }
    };
    let path = if data_dir.is_dir() {
        let path = split_file(&adapter.config, &data_dir, args.split.parse::<Split>()?)?;
        if !path.exists() {
            // What the folder does hold, to pass as --data (AX-b/AX-b.jsonl).
            let mut files: Vec<String> = std::fs::read_dir(&data_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !n.ends_with(".md"))
                .collect();
            files.sort();
            let holds = match files.len() {
                0 => String::new(),
                n if n <= 6 => format!("; it holds {}", files.join(", ")),
                n => format!("; it holds {n} files"),
            };
            return Err(Error::InvalidArgument(format!(
                "{} has no {} split ({} does not exist): pass --split, or --data with a labelled file{holds}",
                data_dir.display(),
                args.split,
                path.display()
            )));
        }
        path
    } else {
        data_dir
    };
    let data = adapter.data_for(&path)?;
    let metrics = data.evaluate_dev(&adapter.model, args.batch_size)?;
    if !args.json {
        println!(
            "{} on {}: {}",
            adapter.info.task,
            path.display(),
            data.describe_dev()
        );
        let width = metrics.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &metrics {
            println!("{k:>width$}  {v:.4}");
        }
    }
    Ok(metrics)
}
