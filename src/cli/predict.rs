//! `ptuning predict`: one JSON line per input example, with the predicted
//! label and the scores behind it.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::tasks::features::featurize;
use crate::tasks::Prediction;
use crate::training::adapter::Adapter;
use crate::training::evaluate::predict;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The checkpoint folder (runs/x/best) or a run folder.
    #[arg(long)]
    run: PathBuf,
    /// Examples in the task's own format (labels optional).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the JSON lines (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let adapter = Adapter::load(&args.run, args.model.as_deref())?;
    let examples = adapter.task.read(&args.input)?;
    let features = featurize(
        &adapter.backbone.tokenizer,
        &examples,
        adapter.info.tokenizer.max_seq_len,
    )?;
    let scored = predict(
        &adapter.model,
        adapter.task.kind(),
        &features.features,
        args.batch_size,
        adapter.backbone.tokenizer.pad_id(),
    )?;
    let mut text = String::new();
    for (example, s) in examples.iter().zip(&scored) {
        let label = match s.prediction {
            Prediction::Class(c) => match adapter.info.label_names.get(c) {
                Some(name) => serde_json::json!(name),
                None => serde_json::json!(c),
            },
            Prediction::Score(v) => serde_json::json!(v),
        };
        let line = serde_json::json!({"guid": example.guid, "label": label, "scores": s.scores});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|e| Error::io(path, e))?,
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("<stdout>", e))?,
    }
    if features.truncated > 0 {
        eprintln!(
            "{} of {} inputs were truncated to {} tokens",
            features.truncated,
            examples.len(),
            adapter.info.tokenizer.max_seq_len
        );
    }
    Ok(())
}
