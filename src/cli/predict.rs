//! `ptuning predict`: predictions of a trained adapter. Sequence tasks and
//! taggers write one JSON line per input (taggers: word tags and entity spans
//! with char offsets; a .txt input is raw text, one text per line, unless it
//! is in column form, as CoNLL-2003's own .txt files); QA writes
//! the official predictions.json (question id → answer).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::atomic_file::write_atomic;
use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::training::adapter::Adapter;
use crate::training::data::Predictions;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The checkpoint folder (runs/x/best) or a run folder.
    #[arg(long)]
    run: PathBuf,
    /// Inputs in the task's own format (labels optional), or raw text (.txt,
    /// unless in column form) for taggers.
    #[arg(long)]
    input: PathBuf,
    /// Where to write (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 32, value_parser = super::at_least_one)]
    batch_size: usize,
}

pub fn run(args: PredictArgs, compute: Compute) -> Result<()> {
    let mut adapter = Adapter::load(&args.run, args.model.as_deref())?;
    adapter.model.use_compute(compute)?;
    let data = adapter.input_for(&args.input)?;
    let text = match data.predict_dev(&adapter.model, args.batch_size)? {
        Predictions::Lines(lines) => lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        Predictions::Document(doc) => {
            serde_json::to_string_pretty(&doc).expect("predictions serialize") + "\n"
        }
    };
    match &args.out {
        Some(path) => write_atomic(path, text.as_bytes())?,
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("<stdout>", e))?,
    }
    eprintln!(
        "{}: {} from {}",
        adapter.info.task,
        data.describe_dev(),
        args.input.display()
    );
    Ok(())
}
