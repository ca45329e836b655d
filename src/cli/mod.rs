//! The `ptuning` command line. Each subcommand has its own file; this one
//! parses arguments, sets up logging and threads, and reports errors.

mod bench;
mod eval;
mod export;
mod import;
mod predict;
mod serve;
mod signals;
mod sweep;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::engine::device::{Compute, Device};
use crate::error::Result;

/// A count that must be at least one (batch sizes, threads): clap reports
/// the flag and the value.
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The global --device and --precision.
fn compute(device: &str, precision: &str) -> Result<Compute> {
    Ok(Compute {
        device: Device::parse(device)?,
        precision: precision.parse()?,
    })
}

#[derive(Parser, Debug)]
#[command(
    name = "ptuning",
    version,
    about = "P-Tuning v2: deep prompt tuning of frozen transformer encoders"
)]
struct Cli {
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, global = true, value_parser = at_least_one)]
    threads: Option<usize>,
    /// Where the encoder runs: cpu, cuda, cuda:N, or auto (GPU 0 when it
    /// can run the model, else the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// Precision of the matrix products on a GPU: fp32, tf32 or bf16. fp32
    /// runs its GEMMs and attention as 3xTF32 (f32 accuracy on the tensor
    /// cores) where the card has them; PTUNING_FP32_GEMM=sgemm asks for
    /// cuBLAS SGEMM and the f32 attention kernels.
    #[arg(long, global = true, default_value = "fp32")]
    precision: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Median time of a training step and of an inference forward, and memory.
    Bench(bench::BenchArgs),
    /// Train a prompt (P-Tuning v2's deep prompt, or prompt tuning's) and a head on a task; writes a run folder.
    Train(Box<train::TrainArgs>),
    /// Train one run per point of a grid of settings and per seed; a table of each point's dev metric over its seeds.
    Sweep(Box<sweep::SweepArgs>),
    /// Metrics of a trained adapter on a labelled split.
    Eval(eval::EvalArgs),
    /// Predictions of a trained adapter, one JSON line per example.
    Predict(predict::PredictArgs),
    /// Serve adapters over one backbone: HTTP API with mixed-task batching.
    Serve(serve::ServeArgs),
    /// Write an adapter in another format (PEFT prefix or prompt tuning).
    Export(export::ExportArgs),
    /// Turn a PEFT prefix- or prompt-tuning adapter into a ptuning checkpoint folder.
    Import(import::ImportArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PTUNING_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs redirected to files stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: --threads {n}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let compute = match compute(&cli.device, &cli.precision) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Bench(args) => bench::run(args, compute),
        Command::Train(args) => train::run(*args, compute),
        Command::Sweep(args) => sweep::run(*args, compute),
        Command::Eval(args) => eval::run(args, compute),
        Command::Predict(args) => predict::run(args, compute),
        Command::Serve(args) => serve::run(args, compute),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // As a shell reports Ctrl-C.
        Err(e @ crate::Error::Interrupted(_)) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
