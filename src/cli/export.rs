//! `ptuning export`: an adapter in another tool's format.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::Result;
use crate::model::prefix::PromptMethod;
use crate::training::checkpoint::{read_run_info, RUN_INFO};
use crate::training::peft::export_peft;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Hugging Face PEFT (adapter_config.json + adapter_model.safetensors):
    /// PREFIX_TUNING, or PROMPT_TUNING for a prompt-tuning adapter.
    Peft,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The checkpoint folder (runs/x/best) or a run folder.
    #[arg(long)]
    run: PathBuf,
    #[arg(long, value_enum, default_value = "peft")]
    format: Format,
    /// The folder to write (created if missing; the adapter files are replaced).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    match args.format {
        Format::Peft => {
            let dir = export_peft(&args.run, &args.out)?;
            let info = read_run_info(&dir.join(RUN_INFO))?;
            let kind = match info.prefix.method {
                PromptMethod::PTuningV2 => "PREFIX_TUNING",
                PromptMethod::PromptTuning => "PROMPT_TUNING",
            };
            eprintln!(
                "wrote a PEFT {kind} adapter from {} to {}",
                dir.display(),
                args.out.display()
            );
        }
    }
    Ok(())
}
