//! `ptuning sweep`: train's settings, a grid over some of them and seeds;
//! one run per point and seed, then the table of each point over its seeds.

use clap::Args;

use crate::engine::device::Compute;
use crate::error::Result;
use crate::training::run_files::TABLE_FILE;
use crate::training::sweep::{sweep, GridAxis, SweepOptions, SweepPlan};
use crate::training::trainer::TrainOptions;

use super::train::SettingsArgs;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The settings every run shares, as `train` takes them; --out is the
    /// sweep's folder, each run's is <out>/<point>/seed=<s>.
    #[command(flatten)]
    settings: SettingsArgs,
    /// A setting and its values, e.g. --grid lr=5e-3,1e-2 --grid prefix-len=8,16
    /// (run.toml's names or the flags'); the runs cover every combination.
    #[arg(long = "grid", value_name = "SETTING=V1,V2,...")]
    grid: Vec<GridAxis>,
    /// The seeds each point runs with, e.g. 1,2,3 [default: --seed's].
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Runs train without progress or tables; the sweep still says one line
    /// per run and prints its table.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: SweepArgs, compute: Compute) -> Result<()> {
    let plan = SweepPlan {
        base: args.settings.config()?,
        grid: args.grid,
        seeds: args.seeds,
    };
    super::signals::stop_training_on_signals()?;
    let report = sweep(
        &plan,
        SweepOptions {
            quiet_runs: args.quiet,
            train: TrainOptions {
                compute,
                stop: Some(&super::signals::STOP_TRAINING),
                ..TrainOptions::default()
            },
        },
    )?;
    println!();
    print!("{}", report.table);
    if let Some(best) = report.results.first().and_then(|r| r.best_run.as_ref()) {
        let adapter = match plan.base.tasks.is_empty() {
            true => format!("adapter in {}", best.join("best").display()),
            false => format!(
                "each task's adapter in {}/<task>",
                best.join("best").display()
            ),
        };
        println!(
            "best point: {}; its best run: {} ({adapter})",
            match report.results[0].point.as_str() {
                "" => "the shared settings",
                point => point,
            },
            best.display(),
        );
    }
    println!("table in {}", plan.base.out.join(TABLE_FILE).display());
    Ok(())
}
