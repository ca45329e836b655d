//! Sweeps: one run per point of a grid of settings and per seed, then each
//! point's best dev metric over its seeds (mean, standard deviation, min,
//! max). P-Tuning v2's learning rate and prompt length want tuning per task
//! (the paper searches both), and small dev sets (CB: 56 examples) make one
//! seed's number noisy: a sweep is how a setting is chosen and reported.
//!
//! The sweep folder: `<out>/<point>/seed=<s>/` is an ordinary run folder
//! (`<point>` names the settings, e.g. `lr=1e-2+prefix_len=8`);
//! `sweep.json` holds the plan, every run's outcome and the table, and
//! `sweep.md` the table. The same command again continues the sweep: a
//! finished run (its summary.json) is read back, an interrupted one resumes
//! from its `last/`, a diverged one stays recorded as diverged, and a grid
//! or seed list given with more values adds their runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};
use crate::model::hub::resolve_model;
use crate::tasks::Split;
use crate::training::checkpoint::checkpoint_dir;
use crate::training::data::split_file;
use crate::training::run_files::{is_occupied, read_json, SUMMARY_FILE, SWEEP_FILE, TABLE_FILE};
use crate::training::trainer::{train, TrainConfig, TrainOptions, MEAN_METRIC};

/// Settings a grid cannot vary: each run's folder is the sweep's to name,
/// seeds come from --seeds, and list-valued settings do not fit `a,b,c`.
const FIXED: [(&str, &str); 4] = [
    ("out", "each run's folder is <out>/<point>/seed=<s>"),
    ("seed", "give the seeds with --seeds"),
    (
        "tasks",
        "a list of task=data pairs cannot be one value of a grid",
    ),
    (
        "text_fields",
        "a list of columns cannot be one value of a grid",
    ),
];

/// One axis of the grid, as `--grid lr=5e-3,1e-2` gives it: a setting (the
/// run.toml's snake_case name; the flag's dashes are accepted) and its
/// values as typed, which also name the runs' folders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridAxis {
    pub key: String,
    pub values: Vec<String>,
}

impl FromStr for GridAxis {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let expected = "expected SETTING=V1,V2,... (e.g. lr=5e-3,1e-2)";
        let (key, values) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: {expected}"))?;
        let key = key.trim().trim_start_matches("--").replace('-', "_");
        if key.is_empty() {
            return Err(format!("{s:?}: no setting before '='; {expected}"));
        }
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        if values.iter().any(|v| v.is_empty()) {
            return Err(format!("{s:?}: an empty value; {expected}"));
        }
        Ok(GridAxis {
            key,
            values: unique(values.into_iter().map(str::to_string)),
        })
    }
}

/// What to sweep: the settings every run shares, the grid over them and the
/// seeds each point runs with.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// Its `out` is the sweep's folder; its `seed` is used when `seeds` is empty.
    pub base: TrainConfig,
    pub grid: Vec<GridAxis>,
    pub seeds: Vec<u64>,
}

/// One run of a sweep.
#[derive(Clone, Debug)]
pub struct SweepRun {
    /// The point's name, also its folder: `lr=1e-2+prefix_len=8` ("" without a grid).
    pub point: String,
    /// The grid's settings at this point, in the grid's order.
    pub settings: Vec<(String, String)>,
    pub seed: u64,
    /// The base settings with the point's, the seed and the run's folder.
    pub config: TrainConfig,
}

impl SweepPlan {
    /// Every run, points in the grid's order (the last axis varying fastest),
    /// each point's seeds together; every run's settings checked before
    /// anything trains, so a typo costs no training time.
    pub fn runs(&self) -> Result<Vec<SweepRun>> {
        let (base, default) = (self.base.to_json(), TrainConfig::default().to_json());
        let known: Vec<&String> = base.as_object().expect("a struct").keys().collect();
        for (i, axis) in self.grid.iter().enumerate() {
            if let Some((_, why)) = FIXED.iter().find(|(k, _)| *k == axis.key) {
                return Err(bad_grid(&axis.key, why));
            }
            if !known.contains(&&axis.key) {
                let names: Vec<&str> = known
                    .iter()
                    .map(|k| k.as_str())
                    .filter(|k| !FIXED.iter().any(|(f, _)| f == k))
                    .collect();
                return Err(bad_grid(
                    &axis.key,
                    &format!("no such setting; expected one of {}", names.join(", ")),
                ));
            }
            if self.grid[..i].iter().any(|a| a.key == axis.key) {
                return Err(bad_grid(&axis.key, "given twice; list its values once"));
            }
            if base[&axis.key] != default[&axis.key] {
                tracing::warn!(
                    "--grid {} replaces the shared setting {} = {} (from a flag or --config)",
                    axis.key,
                    axis.key,
                    base[&axis.key]
                );
            }
        }
        let seeds = match self.seeds.is_empty() {
            true => vec![self.base.seed],
            false => unique(self.seeds.iter().copied()),
        };

        let mut runs = Vec::new();
        let mut folders: BTreeMap<String, String> = BTreeMap::new();
        let mut configs: Vec<(serde_json::Value, String)> = Vec::new();
        for settings in grid_points(&self.grid) {
            let mut config = self.base.clone();
            for (key, value) in &settings {
                config = with_setting(&config, key, value)?;
            }
            let point = point_name(&settings);
            // `lr=1e-2,0.01` would train the same settings twice.
            let fields = config.to_json();
            if let Some((_, same)) = configs.iter().find(|(f, _)| *f == fields) {
                return Err(Error::InvalidArgument(format!(
                    "--grid: the points {same:?} and {point:?} are the same settings; \
                     give each value once"
                )));
            }
            configs.push((fields, point.clone()));
            let folder = folder_name(&point);
            if let Some(other) = folders.insert(folder.clone(), point.clone()) {
                return Err(Error::InvalidArgument(format!(
                    "--grid: the points {other:?} and {point:?} would share the folder {folder:?}; \
                     give their values differently"
                )));
            }
            for (i, &seed) in seeds.iter().enumerate() {
                let mut config = config.clone();
                config.seed = seed;
                config.out = self.base.out.join(&folder).join(format!("seed={seed}"));
                let checked = match i {
                    // What files the point needs is the same for each seed.
                    0 => config.validate().and_then(|()| check_files(&config)),
                    _ => config.validate(),
                };
                checked.map_err(|e| {
                    Error::InvalidArgument(format!(
                        "{}: {}",
                        describe(&settings, seed),
                        e.message()
                    ))
                })?;
                runs.push(SweepRun {
                    point: point.clone(),
                    settings: settings.clone(),
                    seed,
                    config,
                });
            }
        }
        Ok(runs)
    }
}

/// The items once each, in their first order.
fn unique<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// What a run reads before it trains, checked for every point before any
/// trains: the backbone, the prompt it starts from, and a labelled dev
/// split to compare on (a sweep of runs without one has nothing to rank).
fn check_files(config: &TrainConfig) -> Result<()> {
    resolve_model(&config.model)?;
    if let Some(from) = &config.init_from {
        checkpoint_dir(from)?;
    }
    for (_, task) in config.task_configs() {
        let dev = split_file(&task, &task.data, Split::Dev)?;
        if task.dev_from_train.is_none() && !dev.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} has no dev split ({} does not exist), so the runs would have no dev \
                 metric to compare: give --dev-from-train F (a share of train held out)",
                task.task,
                dev.display()
            )));
        }
    }
    Ok(())
}

fn bad_grid(key: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("--grid {key}: {why}"))
}

/// The grid's points: every combination of its axes' values.
fn grid_points(grid: &[GridAxis]) -> Vec<Vec<(String, String)>> {
    grid.iter().fold(vec![Vec::new()], |points, axis| {
        points
            .iter()
            .flat_map(|point| {
                axis.values.iter().map(move |value| {
                    let mut next = point.clone();
                    next.push((axis.key.clone(), value.clone()));
                    next
                })
            })
            .collect()
    })
}

/// `lr=1e-2+prefix_len=8`.
fn point_name(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("+")
}

/// The point's name as a single folder name: a value such as a path
/// (`init_from=runs/rte/best`) must not make folders within folders.
fn folder_name(point: &str) -> String {
    point
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | ' ' => '_',
            c => c,
        })
        .collect()
}

/// A run in messages: `lr=1e-2+prefix_len=8 seed=3`.
fn describe(settings: &[(String, String)], seed: u64) -> String {
    match point_name(settings).as_str() {
        "" => format!("seed={seed}"),
        point => format!("{point} seed={seed}"),
    }
}

/// `config` with one setting changed, the value read as a run.toml reads it
/// (`1e-2`, `16`, `true`) and, where that does not fit the setting, as text
/// (`linear`, `top:3`, `0-5`).
fn with_setting(config: &TrainConfig, key: &str, value: &str) -> Result<TrainConfig> {
    let mut fields = config.to_json();
    let typed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .and_then(|v| serde_json::to_value(v).ok());
    let mut first_error = None;
    for candidate in typed
        .into_iter()
        .chain([serde_json::Value::String(value.into())])
    {
        fields[key] = candidate;
        match serde_json::from_value::<TrainConfig>(fields.clone()) {
            Ok(config) => return Ok(config),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(Error::InvalidArgument(format!(
        "--grid {key}={value}: {}",
        first_error.unwrap_or_default()
    )))
}

/// How a run of a sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Trained to its end (or stopped early by patience).
    Done,
    /// Its loss stopped being finite: an outcome of its settings, kept.
    Diverged,
}

/// One run's outcome, as sweep.json records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub point: String,
    pub settings: BTreeMap<String, String>,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub status: RunStatus,
    /// The dev metric that picked the best epoch (none without a dev split).
    pub main_metric: Option<String>,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<u64>,
    /// Why a diverged run stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A multi-task run's best main metric per task, by its folder under
    /// best/ (e.g. `ner-wnut17`), each at its own best epoch (`best_metric`
    /// is the tasks' mean at the run's best epoch).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_metrics: BTreeMap<String, f64>,
}

impl RunOutcome {
    fn from_summary(run: &SweepRun, summary: &serde_json::Value) -> Self {
        RunOutcome {
            status: RunStatus::Done,
            main_metric: summary["main_metric"].as_str().map(str::to_string),
            best_metric: summary["best_metric"].as_f64(),
            best_epoch: summary["best_epoch"].as_u64(),
            error: None,
            task_metrics: summary["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                // By folder name: one task may come twice, on two datasets.
                .filter_map(|t| Some((t["slug"].as_str()?.to_string(), t["best_metric"].as_f64()?)))
                .collect(),
            ..RunOutcome::new(run)
        }
    }

    fn diverged(run: &SweepRun, why: String) -> Self {
        RunOutcome {
            status: RunStatus::Diverged,
            error: Some(why),
            ..RunOutcome::new(run)
        }
    }

    fn new(run: &SweepRun) -> Self {
        RunOutcome {
            point: run.point.clone(),
            settings: run.settings.iter().cloned().collect(),
            seed: run.seed,
            run_dir: run.config.out.clone(),
            status: RunStatus::Done,
            main_metric: None,
            best_metric: None,
            best_epoch: None,
            error: None,
            task_metrics: BTreeMap::new(),
        }
    }
}

/// A point of the grid over its seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    pub point: String,
    pub settings: Vec<(String, String)>,
    pub main_metric: Option<String>,
    /// Runs with a dev metric, of `planned`.
    pub runs: usize,
    pub planned: usize,
    pub diverged: usize,
    pub mean: Option<f64>,
    /// The sample standard deviation (n − 1), from two runs on.
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The run with the highest metric: its best/ is the adapter to keep.
    pub best_run: Option<PathBuf>,
}

/// Each point's runs summarised, best mean first (points without a metric last).
pub fn aggregate(runs: &[SweepRun], outcomes: &[RunOutcome]) -> Vec<PointResult> {
    let mut results: Vec<PointResult> = Vec::new();
    for run in runs {
        if results.iter().any(|r| r.point == run.point) {
            continue;
        }
        let of_point: Vec<&RunOutcome> = outcomes.iter().filter(|o| o.point == run.point).collect();
        let scored: Vec<(&RunOutcome, f64)> = of_point
            .iter()
            .filter_map(|o| o.best_metric.filter(|m| m.is_finite()).map(|m| (*o, m)))
            .collect();
        let values: Vec<f64> = scored.iter().map(|(_, m)| *m).collect();
        let n = values.len();
        let mean = (n > 0).then(|| values.iter().sum::<f64>() / n as f64);
        let std = mean.filter(|_| n > 1).map(|mean| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        // The first run (in seed order) of the highest metric.
        let best = scored
            .iter()
            .fold(None, |best: Option<&(&RunOutcome, f64)>, run| match best {
                Some(b) if b.1 >= run.1 => Some(b),
                _ => Some(run),
            })
            .map(|(o, _)| o.run_dir.clone());
        results.push(PointResult {
            point: run.point.clone(),
            settings: run.settings.clone(),
            main_metric: of_point.iter().find_map(|o| o.main_metric.clone()),
            runs: n,
            planned: runs.iter().filter(|r| r.point == run.point).count(),
            diverged: of_point
                .iter()
                .filter(|o| o.status == RunStatus::Diverged)
                .count(),
            mean,
            std,
            min: values.iter().copied().reduce(f64::min),
            max: values.iter().copied().reduce(f64::max),
            best_run: best,
        });
    }
    // Stable: equal means keep the grid's order.
    results.sort_by(|a, b| match (a.mean, b.mean) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    results
}

/// The results as a Markdown table, one row per point, best first.
pub fn render_table(grid: &[GridAxis], results: &[PointResult]) -> String {
    let metrics: Vec<&str> = results
        .iter()
        .filter_map(|r| r.main_metric.as_deref())
        .collect();
    let one_metric = metrics.windows(2).all(|w| w[0] == w[1]);
    let metric = match (one_metric, metrics.first()) {
        (true, Some(&MEAN_METRIC)) => "tasks' mean dev metric".to_string(),
        (true, Some(m)) => format!("dev {m}"),
        _ => "dev metric".to_string(),
    };
    let mut header: Vec<String> = grid.iter().map(|a| a.key.clone()).collect();
    if !one_metric {
        header.push("metric".into());
    }
    header.extend([
        format!("{metric}, mean"),
        "std".into(),
        "min".into(),
        "max".into(),
        "runs".into(),
    ]);
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!("|{}", " --- |".repeat(header.len())),
    ];
    for r in results {
        let mut row: Vec<String> = grid
            .iter()
            .map(|axis| {
                r.settings
                    .iter()
                    .find(|(k, _)| *k == axis.key)
                    // A `|` in a value would end its Markdown cell.
                    .map_or("-".to_string(), |(_, v)| v.replace('|', "\\|"))
            })
            .collect();
        if !one_metric {
            row.push(r.main_metric.clone().unwrap_or_else(|| "-".into()));
        }
        let mut runs = format!("{}/{}", r.runs, r.planned);
        if r.diverged > 0 {
            runs.push_str(&format!(" ({} diverged)", r.diverged));
        }
        row.extend([fmt(r.mean), fmt(r.std), fmt(r.min), fmt(r.max), runs]);
        lines.push(format!("| {} |", row.join(" | ")));
    }
    lines.join("\n") + "\n"
}

/// What sweep.json holds.
#[derive(Debug, Serialize, Deserialize)]
struct SweepRecord {
    /// The settings every run shares (absolute paths; `out` is the sweep's
    /// folder; `seed` is the runs' when `seeds` has only it).
    base: TrainConfig,
    grid: Vec<GridAxis>,
    seeds: Vec<u64>,
    runs: Vec<RunOutcome>,
    results: Vec<PointResult>,
}

/// How the sweep talks and where it runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct SweepOptions {
    /// Runs train quietly; the sweep still says one line per run.
    pub quiet_runs: bool,
    pub train: TrainOptions,
}

/// The sweep's results.
#[derive(Debug)]
pub struct SweepReport {
    pub results: Vec<PointResult>,
    pub table: String,
    /// Runs trained (or resumed) by this call; the others were read back.
    pub trained: usize,
}

/// Runs the sweep in `plan.base.out`, one run after another (each uses every
/// core), recording each outcome as it comes so that an interruption loses
/// at most the run in flight, which resumes from its `last/`.
pub fn sweep(plan: &SweepPlan, options: SweepOptions) -> Result<SweepReport> {
    let base = plan.base.clone().with_absolute_paths()?;
    let plan = SweepPlan {
        base,
        ..plan.clone()
    };
    if plan.base.out.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(
            "--out is required: the sweep's folder".into(),
        ));
    }
    let runs = plan.runs()?;
    let record_path = plan.base.out.join(SWEEP_FILE);
    let previous = read_record(&record_path)?;
    match &previous {
        Some(previous) => {
            check_same_base(&record_path, &previous.base, &plan.base, &plan.grid)?;
            let outside = previous
                .runs
                .iter()
                .filter(|o| !runs.iter().any(|r| r.point == o.point && r.seed == o.seed))
                .count();
            if outside > 0 {
                tracing::warn!(
                    "{outside} run(s) recorded in {} are outside this command's grid and \
                     seeds: they stay in their folders, out of this table",
                    record_path.display()
                );
            }
        }
        None => check_free(&plan.base.out)?,
    }
    // What is known of each run: diverged runs stay diverged (not retried).
    let mut outcomes: Vec<Option<RunOutcome>> = runs
        .iter()
        .map(|run| {
            previous.as_ref().and_then(|p| {
                p.runs
                    .iter()
                    .find(|o| {
                        o.point == run.point
                            && o.seed == run.seed
                            && o.status == RunStatus::Diverged
                    })
                    .cloned()
            })
        })
        .collect();
    // Written before the first run: the shared settings are fixed from the
    // start, so an interrupted first run cannot be continued with others.
    let mut results = write_record(&record_path, &plan, &runs, &outcomes)?;

    let total = runs.len();
    let points = results.len();
    println!(
        "sweep: {points} point(s) × {} seed(s) = {total} run(s) in {}",
        total / points,
        plan.base.out.display()
    );
    let mut trained = 0;
    for (i, run) in runs.iter().enumerate() {
        let what = format!("[{}/{total}] {}", i + 1, describe(&run.settings, run.seed));
        // Ctrl-C between runs (a run's own steps check it too).
        if options
            .train
            .stop
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Err(Error::Interrupted(format!(
                "before {what}: the same sweep command continues it"
            )));
        }
        let summary = finished_summary(&run.config.out)?;
        let outcome = if let Some(summary) = summary {
            let outcome = RunOutcome::from_summary(run, &summary);
            println!("{what}: {} (recorded)", outcome_line(&outcome));
            outcome
        } else if let Some(diverged) = outcomes[i].clone() {
            println!("{what}: {} (recorded)", outcome_line(&diverged));
            diverged
        } else {
            let resume = run.config.out.join("last").exists();
            println!(
                "{what}: {} {}",
                if resume { "resuming" } else { "training" },
                run.config.out.display()
            );
            trained += 1;
            let start = Instant::now();
            let result = train(
                &run.config,
                TrainOptions {
                    resume,
                    quiet: options.quiet_runs,
                    ..options.train
                },
            );
            let outcome = match result {
                Ok(summary) => RunOutcome::from_summary(run, &summary),
                Err(Error::Training(why)) => RunOutcome::diverged(run, why),
                // The run's own message says --resume, which is train's.
                Err(Error::Interrupted(_)) => {
                    return Err(Error::Interrupted(format!(
                        "in {what}: the same sweep command continues it from its last epoch"
                    )))
                }
                Err(e) => {
                    println!("{what}: failed (the runs before it are recorded)");
                    return Err(e);
                }
            };
            println!(
                "{what}: {} ({:.0} s)",
                outcome_line(&outcome),
                start.elapsed().as_secs_f64()
            );
            outcome
        };
        if outcome.status == RunStatus::Done && outcome.best_epoch.is_none() {
            // A dev file without labels: known only once a run has read it.
            return Err(Error::InvalidArgument(format!(
                "{what}: the run had no labelled dev split, so the runs have no dev metric \
                 to compare: start a sweep in a new --out with --dev-from-train F"
            )));
        }
        outcomes[i] = Some(outcome);
        results = write_record(&record_path, &plan, &runs, &outcomes)?;
    }
    let table = render_table(&plan.grid, &results);
    write_atomic(&plan.base.out.join(TABLE_FILE), table.as_bytes())?;
    Ok(SweepReport {
        results,
        table,
        trained,
    })
}

/// The summary of a run that has ended (trained its epochs or stopped
/// early); `None` for one not started, interrupted or paused.
fn finished_summary(run_dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = run_dir.join(SUMMARY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let summary: serde_json::Value = read_json(&path)?;
    Ok((summary["paused"] != true).then_some(summary))
}

/// A new sweep's folder: absent or empty. A run's or a checkpoint's folder
/// would have its files mixed with the sweep's (and a resumed run swaps its
/// checkpoint folders in whole, sweep inside or not).
fn check_free(out: &Path) -> Result<()> {
    if is_occupied(out) {
        return Err(Error::InvalidArgument(format!(
            "--out {} already holds files and no {SWEEP_FILE}: a sweep starts in a new or \
             empty folder; choose another --out",
            out.display()
        )));
    }
    Ok(())
}

/// `best dev accuracy 0.7321 at epoch 7`, or why there is none.
fn outcome_line(o: &RunOutcome) -> String {
    match (o.status, o.best_metric, &o.main_metric) {
        (RunStatus::Diverged, ..) => format!(
            "diverged: {}",
            o.error
                .as_deref()
                .unwrap_or("the loss stopped being finite")
        ),
        (_, Some(m), Some(name)) => format!(
            "best dev {name} {m:.4} at epoch {}",
            o.best_epoch.unwrap_or(0)
        ),
        _ => "no dev metric (the task has no labelled dev split: give --dev-from-train)".into(),
    }
}

/// The settings as compared between calls: the seed is a run's, not the sweep's.
fn shared_settings(base: &TrainConfig) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = match base.to_json() {
        serde_json::Value::Object(fields) => fields,
        _ => unreachable!("a struct serializes to an object"),
    };
    fields.remove("seed");
    fields
}

/// A sweep folder continues only with the settings it started with: runs
/// of other settings would sit in one table as if comparable.
fn check_same_base(
    path: &Path,
    stored: &TrainConfig,
    now: &TrainConfig,
    grid: &[GridAxis],
) -> Result<()> {
    let stored = shared_settings(stored);
    // The grid's settings are each run's own, whatever the base says.
    let changed: Vec<String> = shared_settings(now)
        .iter()
        .filter(|(key, _)| !grid.iter().any(|axis| axis.key == **key))
        .filter(|(key, value)| stored.get(key.as_str()) != Some(value))
        .map(|(key, value)| {
            let before = stored.get(key.as_str()).unwrap_or(&serde_json::Value::Null);
            format!("{key} (recorded {before}, now {value})")
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(Error::Config {
        path: path.to_path_buf(),
        message: format!(
            "this sweep was started with other shared settings: {}; give the same flags to \
             continue it, or another --out for a new sweep",
            changed.join(", ")
        ),
    })
}

fn read_record(path: &Path) -> Result<Option<SweepRecord>> {
    match path.exists() {
        true => read_json(path).map(Some),
        false => Ok(None),
    }
}

/// Writes sweep.json (atomically) with the outcomes so far; returns the table's rows.
fn write_record(
    path: &Path,
    plan: &SweepPlan,
    runs: &[SweepRun],
    outcomes: &[Option<RunOutcome>],
) -> Result<Vec<PointResult>> {
    let outcomes: Vec<RunOutcome> = outcomes.iter().flatten().cloned().collect();
    let results = aggregate(runs, &outcomes);
    let record = SweepRecord {
        base: plan.base.clone(),
        grid: plan.grid.clone(),
        seeds: unique(runs.iter().map(|r| r.seed)),
        runs: outcomes,
        results: results.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&record).expect("record serializes");
    bytes.push(b'\n');
    std::fs::create_dir_all(&plan.base.out).map_err(|e| Error::io(&plan.base.out, e))?;
    write_atomic(path, &bytes)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(grid: &[&str], seeds: &[u64]) -> SweepPlan {
        SweepPlan {
            base: TrainConfig {
                task: "superglue/cb".into(),
                data: env!("CARGO_MANIFEST_DIR").into(),
                out: "sweeps/cb".into(),
                model: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-bert").into(),
                dev_from_train: Some(0.1),
                ..TrainConfig::default()
            },
            grid: grid.iter().map(|g| g.parse().unwrap()).collect(),
            seeds: seeds.to_vec(),
        }
    }

    #[test]
    fn a_grid_axis_reads_a_setting_and_its_values() {
        let axis: GridAxis = "--prefix-len=8, 16,8".parse().unwrap();
        assert_eq!(axis.key, "prefix_len");
        assert_eq!(axis.values, ["8", "16"]);
        for bad in ["lr", "=1,2", "lr=1,,2", "lr="] {
            let err = bad.parse::<GridAxis>().unwrap_err();
            assert!(err.contains("SETTING=V1,V2"), "{bad}: {err}");
        }
    }

    #[test]
    fn runs_cover_the_grid_and_seeds_with_typed_settings() {
        let runs = plan(
            &["lr=5e-3,1e-2", "prefix_len=8,16", "scheduler=exp"],
            &[1, 2],
        )
        .runs()
        .unwrap();
        assert_eq!(runs.len(), 8);
        let names: Vec<String> = runs
            .iter()
            .map(|r| format!("{} {}", r.point, r.seed))
            .collect();
        assert_eq!(names[0], "lr=5e-3+prefix_len=8+scheduler=exp 1");
        assert_eq!(names[1], "lr=5e-3+prefix_len=8+scheduler=exp 2");
        assert_eq!(names[2], "lr=5e-3+prefix_len=16+scheduler=exp 1");
        assert_eq!(names[7], "lr=1e-2+prefix_len=16+scheduler=exp 2");
        let last = &runs[7].config;
        assert_eq!((last.lr, last.prefix_len, last.seed), (1e-2, 16, 2));
        assert_eq!(last.scheduler, "exp");
        assert_eq!(
            last.out,
            Path::new("sweeps/cb/lr=1e-2+prefix_len=16+scheduler=exp/seed=2")
        );
        // Untouched settings are the base's.
        assert_eq!(last.epochs, TrainConfig::default().epochs);
    }

    #[test]
    fn values_that_are_not_toml_are_text_and_options_take_values() {
        let runs = plan(
            &[
                "prefix_layers=top:3,0-5",
                "patience=3",
                "method=prompt-tuning",
                "data=tests/fixtures",
            ],
            &[],
        )
        .runs();
        // prompt tuning refuses layers other than all: checked before training.
        let err = runs.unwrap_err().to_string();
        assert!(
            err.contains("top:3") && err.contains("prompt-tuning"),
            "{err}"
        );
        let runs = plan(
            &[
                "prefix_layers=top:3,0-5",
                "patience=3",
                "data=tests/fixtures",
            ],
            &[],
        )
        .runs()
        .unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].config.prefix_layers, "top:3");
        assert_eq!(runs[0].config.patience, Some(3));
        assert_eq!(runs[0].seed, 42, "without --seeds, the base seed");
        // A path value makes one folder, not nested ones.
        assert_eq!(
            runs[1].config.out,
            Path::new("sweeps/cb/prefix_layers=0-5+patience=3+data=tests_fixtures/seed=42")
        );
    }

    #[test]
    fn bad_grids_are_refused_before_training() {
        let cases = [
            (vec!["lr=fast"], "--grid lr=fast"),
            (vec!["learning_rate=1"], "no such setting; expected one of"),
            (vec!["seed=1,2"], "--seeds"),
            (vec!["out=a"], "<out>/<point>"),
            (vec!["lr=1", "lr=2"], "given twice"),
            (vec!["epochs=0"], "--epochs must be at least 1"),
            (
                vec!["scheduler=linear,cosine"],
                "scheduler=cosine seed=42: --scheduler \"cosine\"",
            ),
            (vec!["prefix_len=0"], "--prefix-len must be at least 1"),
            // What a run reads is found before the first trains.
            (
                vec!["init_from=runs/nope"],
                "init_from=runs/nope seed=42: runs/nope is not a checkpoint folder",
            ),
            (
                vec!["model=/no/model"],
                "model=/no/model seed=42: /no/model: model folder does not exist",
            ),
            (vec!["task=superglue/cbb"], "unknown task \"superglue/cbb\""),
            (
                vec!["data=/nonexistent"],
                "--data /nonexistent: no such file or folder",
            ),
            // One "invalid argument" prefix, not one per layer of context.
            (
                vec!["lr=-1"],
                "invalid argument: lr=-1 seed=42: --lr -1 must be",
            ),
            (vec!["prefix_layers=a/b,a:b"], "would share the folder"),
            (
                vec!["lr=1e-2,0.01"],
                "\"lr=1e-2\" and \"lr=0.01\" are the same settings",
            ),
        ];
        for (grid, expected) in cases {
            let err = plan(&grid, &[]).runs().unwrap_err().to_string();
            assert!(err.contains(expected), "{grid:?}: {err}");
        }
        // No dev split to rank the runs on (CB's folder here is the crate's).
        let mut no_dev = plan(&["lr=1e-2"], &[]);
        no_dev.base.dev_from_train = None;
        let err = no_dev.runs().unwrap_err().to_string();
        assert!(
            err.contains("superglue/cb has no dev split") && err.contains("--dev-from-train"),
            "{err}"
        );
    }

    fn outcome(point: &str, seed: u64, metric: Option<f64>, status: RunStatus) -> RunOutcome {
        RunOutcome {
            point: point.into(),
            settings: BTreeMap::new(),
            seed,
            run_dir: format!("{point}/seed={seed}").into(),
            status,
            main_metric: Some("accuracy".into()),
            best_metric: metric,
            best_epoch: metric.map(|_| 3),
            error: None,
            task_metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn points_aggregate_over_seeds_best_mean_first() {
        let p = plan(&["lr=1,2,3"], &[1, 2, 3]);
        let runs = p.runs().unwrap();
        let outcomes = vec![
            outcome("lr=1", 1, Some(0.5), RunStatus::Done),
            outcome("lr=1", 2, Some(0.7), RunStatus::Done),
            outcome("lr=1", 3, Some(0.6), RunStatus::Done),
            outcome("lr=2", 1, Some(0.8), RunStatus::Done),
            outcome("lr=2", 2, None, RunStatus::Diverged),
            outcome("lr=3", 1, None, RunStatus::Diverged),
        ];
        let results = aggregate(&runs, &outcomes);
        let order: Vec<&str> = results.iter().map(|r| r.point.as_str()).collect();
        assert_eq!(order, ["lr=2", "lr=1", "lr=3"]);
        let lr1 = &results[1];
        assert!((lr1.mean.unwrap() - 0.6).abs() < 1e-12);
        assert!((lr1.std.unwrap() - 0.1).abs() < 1e-12, "sample std");
        assert_eq!((lr1.min, lr1.max), (Some(0.5), Some(0.7)));
        assert_eq!(lr1.best_run.as_deref(), Some(Path::new("lr=1/seed=2")));
        assert_eq!((lr1.runs, lr1.planned), (3, 3));
        let lr2 = &results[0];
        assert_eq!((lr2.runs, lr2.diverged, lr2.std), (1, 1, None));
        assert_eq!((results[2].mean, results[2].runs), (None, 0));

        let table = render_table(&p.grid, &results);
        let lines: Vec<&str> = table.lines().collect();
        let piped = render_table(
            &["prompt_init=text:a|b".parse().unwrap()],
            &[PointResult {
                settings: vec![("prompt_init".into(), "text:a|b".into())],
                ..results[0].clone()
            }],
        );
        assert!(piped.contains("| text:a\\|b |"), "{piped}");
        assert_eq!(
            lines[0],
            "| lr | dev accuracy, mean | std | min | max | runs |"
        );
        assert_eq!(
            lines[2],
            "| 2 | 0.8000 | - | 0.8000 | 0.8000 | 1/3 (1 diverged) |"
        );
        assert_eq!(lines[3], "| 1 | 0.6000 | 0.1000 | 0.5000 | 0.7000 | 3/3 |");
        assert_eq!(lines[4], "| 3 | - | - | - | - | 0/3 (1 diverged) |");
    }

    #[test]
    fn the_best_run_of_a_tie_is_the_first() {
        let runs = plan(&[], &[1, 2, 3]).runs().unwrap();
        let outcomes = [(1, 0.5), (2, 0.75), (3, 0.75)]
            .map(|(seed, m)| outcome("", seed, Some(m), RunStatus::Done));
        let results = aggregate(&runs, &outcomes);
        assert_eq!(results[0].best_run.as_deref(), Some(Path::new("/seed=2")));
    }

    #[test]
    fn a_sweep_continues_only_with_its_own_shared_settings() {
        let path = Path::new("sweeps/cb/sweep.json");
        let base = plan(&[], &[]).base;
        assert!(shared_settings(&base).get("seed").is_none());
        let reseeded = TrainConfig {
            seed: 7,
            ..base.clone()
        };
        check_same_base(path, &base, &reseeded, &[]).expect("the seed is a run's");
        let other = TrainConfig {
            epochs: 3,
            dropout: 0.2,
            ..base.clone()
        };
        // A setting the grid gives each run is not a shared one.
        let lr = TrainConfig {
            lr: 0.5,
            ..base.clone()
        };
        check_same_base(path, &base, &lr, &["lr=1e-2".parse().unwrap()]).unwrap();
        let err = check_same_base(path, &base, &other, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sweep.json")
                && err.contains("dropout (recorded 0.1, now 0.2), epochs (recorded 10, now 3)"),
            "{err}"
        );
    }
}
