//! `ptuning export`: an adapter in another tool's format.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::Result;
use crate::training::peft::export_peft;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Hugging Face PEFT prefix tuning (adapter_config.json + adapter_model.safetensors).
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
            eprintln!(
                "wrote a PEFT prefix-tuning adapter from {} to {}",
                dir.display(),
                args.out.display()
            );
        }
    }
    Ok(())
}
