//! The training loop of P-Tuning v2: epochs over shuffled, dynamically padded
//! batches; AdamW with clipping and a schedule; evaluation on dev after each
//! epoch; `best/` by the task's main metric, `last/` with everything needed to
//! resume exactly; early stopping by patience.
//!
//! Reproducibility: the shuffle of epoch e and the dropout masks of step s are
//! pure functions of (seed, e) and (seed, s), so a resumed run continues with
//! the very batches and masks the uninterrupted run would have used.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::model::bert::BertModel;
use crate::model::config::BertConfig;
use crate::model::encoder::{Activations, DropoutConfig};
use crate::model::heads::ClassificationHead;
use crate::model::hub::resolve_model;
use crate::model::prefix::{method_layers, PrefixConfig, PrefixEncoder, PromptInit, PromptMethod};
use crate::model::prompt_model::PromptModel;
use crate::model::tokenizer::Tokenizer;
use crate::training::adamw::{AdamW, AdamWConfig};
use crate::training::checkpoint::{
    created_by, load_checkpoint_set, save_checkpoint, save_checkpoint_set, weights_hash,
    BackboneInfo, Checkpoint, CheckpointRef, PrefixInfo, RunInfo, TokenizerInfo, TrainerState,
    FORMAT_VERSION,
};
use crate::training::curve::{write_training_curve, EpochPoint};
use crate::training::data::{
    check_task, derive_seed, load_task_data, shuffled, DevSource, Family, HeadSpec, TaskData,
    DROPOUT, INIT_HEAD, INIT_PREFIX, SHUFFLE, TASK_MIX,
};
use crate::training::multitask::{task_slugs, validate_sources, TaskHead, TaskHeads, TaskSource};
use crate::training::run_files::{write_summary, EventKind, MetricsEvent, MetricsLog, SWEEP_FILE};
use crate::training::schedule::Schedule;
use crate::training::warm_start::warm_start;

/// The metric of a multi-task run that picks its best epoch and drives
/// patience: the mean of the tasks' main dev metrics.
pub const MEAN_METRIC: &str = "mean";

/// Every setting of a run. Flags and `--config run.toml` fill it (flags win);
/// it is stored in each checkpoint's ptuning.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub task: String,
    /// The task's data folder (train/dev files), or for custom tasks the folder
    /// holding train.{csv,tsv,jsonl}.
    pub data: PathBuf,
    pub out: PathBuf,
    /// Model folder or hub id.
    pub model: String,
    /// P-Tuning v2 (deep prompts, the default) or prompt tuning (the
    /// shallow baseline: the prompt in front of the input only).
    pub method: PromptMethod,
    pub prefix_len: usize,
    pub prefix_projection: bool,
    pub prefix_hidden_size: usize,
    pub prefix_layers: String,
    /// Prompt tuning's start: vocab (the default), random or text:TEXT.
    pub prompt_init: Option<PromptInit>,
    pub lr: f32,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub epochs: usize,
    /// Dropout of the prefix and of the backbone's hidden states
    /// (hidden_dropout_prob); attention dropout keeps the model's own value.
    pub dropout: f32,
    /// Tokens per sequence (or window); default 128, and 384 for QA.
    pub max_seq_len: Option<usize>,
    /// QA: tokens shared by consecutive context windows.
    pub doc_stride: usize,
    /// SQuAD v2: predict no answer when null score − best span score exceeds this.
    pub null_score_diff_threshold: f32,
    pub seed: u64,
    pub weight_decay: f32,
    pub warmup_ratio: f32,
    pub max_grad_norm: f32,
    /// Stop after this many epochs without a better dev metric.
    pub patience: Option<usize>,
    /// linear (per step, to 0), exp (×gamma per epoch) or constant.
    pub scheduler: String,
    pub gamma: f32,
    /// Hold out this fraction of train as dev (for model selection).
    pub dev_from_train: Option<f32>,
    /// custom/classification: the text columns and the label column.
    pub text_fields: Vec<String>,
    pub label_field: Option<String>,
    /// custom/conll: 0-based columns of the word and of the tag (default: the last).
    pub token_col: usize,
    pub tag_col: Option<usize>,
    /// Start from this adapter's prompt (and its head, for the same task and
    /// labels) instead of random ones: see training::warm_start.
    pub init_from: Option<PathBuf>,
    /// Multi-task: several datasets sharing the prompt, a head each (instead
    /// of `task` and `data`): see training::multitask.
    pub tasks: Vec<TaskSource>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            task: String::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            model: crate::model::hub::DEFAULT_MODEL.into(),
            method: PromptMethod::PTuningV2,
            prefix_len: 16,
            prefix_projection: false,
            prefix_hidden_size: 512,
            prefix_layers: "all".into(),
            prompt_init: None,
            lr: 1e-2,
            batch_size: 16,
            eval_batch_size: 32,
            epochs: 10,
            dropout: 0.1,
            max_seq_len: None,
            doc_stride: 128,
            null_score_diff_threshold: 0.0,
            seed: 42,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            patience: None,
            scheduler: "linear".into(),
            gamma: 0.95,
            dev_from_train: None,
            text_fields: Vec::new(),
            label_field: None,
            token_col: 0,
            tag_col: None,
            init_from: None,
            tasks: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// Reads a run.toml; unknown keys are errors (a typo must not be ignored).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The settings as JSON, floats as typed: `0.1`, where a detour through
    /// `serde_json::to_value` would widen the f32 to 0.10000000149011612.
    pub fn to_json(&self) -> serde_json::Value {
        let text = serde_json::to_vec(self).expect("settings serialize");
        serde_json::from_slice(&text).expect("serde_json reads what it wrote")
    }

    /// The same settings with absolute paths (data, out, --init-from, and a
    /// model given as a folder; hub ids stay), so that the run folder's
    /// record of them works from any directory: `eval` finds the training
    /// data and the backbone the adapter names wherever it runs.
    pub fn with_absolute_paths(mut self) -> Result<Self> {
        // Resolved where it exists (no `..` left), else made absolute.
        let absolute = |p: &Path| -> Result<PathBuf> {
            if p.as_os_str().is_empty() {
                return Ok(PathBuf::new());
            }
            p.canonicalize()
                .or_else(|_| std::path::absolute(p))
                .map_err(|e| Error::io(p, e))
        };
        self.data = absolute(&self.data)?;
        self.out = absolute(&self.out)?;
        for source in &mut self.tasks {
            source.data = absolute(&source.data)?;
        }
        if let Some(from) = &self.init_from {
            self.init_from = Some(absolute(from)?);
        }
        let model = Path::new(&self.model);
        if model.is_dir() {
            self.model = absolute(model)?.display().to_string();
        }
        Ok(self)
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
            .unwrap_or_else(|| Family::of(&self.task).default_max_seq_len())
    }

    /// The run's tasks, each with its folder name under best/ and last/
    /// ("" for a single task) and its settings: this config with the
    /// task's `task` and `data`.
    pub fn task_configs(&self) -> Vec<(String, TrainConfig)> {
        if self.tasks.is_empty() {
            return vec![(String::new(), self.clone())];
        }
        self.tasks
            .iter()
            .zip(task_slugs(&self.tasks))
            .map(|(source, slug)| {
                let config = TrainConfig {
                    task: source.task.clone(),
                    data: source.data.clone(),
                    ..self.clone()
                };
                (slug, config)
            })
            .collect()
    }

    /// The checks of the settings that need no data or model.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.tasks.is_empty() {
            return self.validate_task();
        }
        if !self.task.is_empty() || !self.data.as_os_str().is_empty() {
            return Err(Error::InvalidArgument(
                "give --tasks, or --task and --data, not both".into(),
            ));
        }
        validate_sources(&self.tasks)?;
        self.task_configs()
            .iter()
            .try_for_each(|(_, config)| config.validate_task())
    }

    /// The checks of one task's settings.
    fn validate_task(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.task.is_empty() {
            return bad("--task is required (e.g. superglue/cb), or --tasks for several".into());
        }
        if self.out.as_os_str().is_empty() {
            return bad("--out is required: the run folder".into());
        }
        check_task(self)?;
        if self.data.as_os_str().is_empty() {
            return bad(format!("--data is required: {}'s data folder", self.task));
        }
        if !self.data.exists() {
            return bad(format!(
                "--data {}: no such file or folder",
                self.data.display()
            ));
        }
        if self.prefix_len == 0 {
            return bad("--prefix-len must be at least 1".into());
        }
        if self.prefix_projection && self.prefix_hidden_size == 0 {
            return bad("--prefix-hidden-size must be at least 1".into());
        }
        Schedule::parse(&self.scheduler, 0, 0, self.gamma)?;
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr {} must be a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("--dropout {} must be in [0, 1)", self.dropout));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio {} must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if self.method == PromptMethod::PromptTuning {
            // Checked before any data is read.
            method_layers(self.method, &self.prefix_layers, 0)?;
        }
        if let Some(init) = &self.prompt_init {
            if self.method != PromptMethod::PromptTuning || self.prefix_projection {
                return bad(format!(
                    "--prompt-init {init} sets where prompt tuning's plain table starts; \
                     P-Tuning v2's keys and values and a reparameterized prompt start \
                     from N(0, 0.02²) (pass --method prompt-tuning without --prefix-projection)"
                ));
            }
            if self.init_from.is_some() {
                return bad(format!(
                    "--prompt-init {init} and --init-from both set where the prompt starts: give one"
                ));
            }
        }
        if self.max_seq_len() < 8 {
            return bad(format!("--max-seq-len {} is too short", self.max_seq_len()));
        }
        if Family::of(&self.task) == Family::Qa && self.doc_stride >= self.max_seq_len() {
            return bad(format!(
                "--doc-stride {} must be below --max-seq-len {}",
                self.doc_stride,
                self.max_seq_len()
            ));
        }
        if let Some(f) = self.dev_from_train {
            if !(f > 0.0 && f < 1.0) {
                return bad(format!("--dev-from-train {f} must be in (0, 1)"));
            }
        }
        Ok(())
    }
}

/// How the loop talks to the user.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainOptions {
    pub resume: bool,
    pub quiet: bool,
    /// End this session after this epoch (last/ saved; the run can be resumed).
    /// The schedule still spans all epochs, so pausing changes nothing.
    pub stop_after_epoch: Option<usize>,
    /// Where the encoder runs (not a hyperparameter: a run resumes anywhere).
    pub compute: Compute,
    /// Set (by a signal) to stop at the next step with `Error::Interrupted`.
    pub stop: Option<&'static AtomicBool>,
}

/// The backbone, its tokenizer and identity.
pub struct Backbone {
    pub model: Arc<BertModel>,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    pub hash: String,
}

impl Backbone {
    pub fn load(name: &str) -> Result<Self> {
        let dir = resolve_model(name)?;
        Ok(Backbone {
            model: Arc::new(BertModel::load(&dir)?),
            tokenizer: Tokenizer::from_dir(&dir)?,
            hash: weights_hash(&dir)?,
            dir,
        })
    }
}

/// Prints a line unless quiet.
struct Reporter {
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    fn new(quiet: bool) -> Self {
        Reporter { quiet, bar: None }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    /// A bar on a terminal; plain lines per epoch otherwise.
    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: u64) {
        if self.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = indicatif::ProgressBar::new(steps);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn step(&self, loss: f64, lr: f32, examples_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {examples_per_s:.0} ex/s"
            ));
            bar.inc(1);
        }
    }

    fn end_epoch(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// One task of a run as the loop holds it: its name in the run folder
/// ("" for a single-task run), its data and its checkpoints' metadata.
struct RunTask {
    slug: String,
    data: Box<dyn TaskData>,
    info: RunInfo,
    /// The best value of its main dev metric so far (multi-task runs keep a
    /// best/ per task).
    best: Option<f64>,
}

/// Trains as configured; returns the summary also written to summary.json.
/// With `tasks` (multi-task), the prompt is shared and each task has its
/// own head: see training::multitask.
pub fn train(config: &TrainConfig, options: TrainOptions) -> Result<serde_json::Value> {
    let mut config = config.clone().with_absolute_paths()?;
    let out = config.out.clone();
    let last_dir = out.join("last");
    let best_dir = out.join("best");

    // Resume: the stored settings win; only the length of the run may change.
    let resumed = if options.resume {
        let ckpts = load_checkpoint_set(&last_dir).map_err(|e| {
            Error::InvalidArgument(format!("--resume: cannot load {}: {e}", last_dir.display()))
        })?;
        let mut stored: TrainConfig =
            serde_json::from_value(ckpts[0].1.info.hyperparameters.clone()).map_err(|e| {
                Error::Json {
                    path: last_dir.join("ptuning.json"),
                    message: format!("hyperparameters: {e}"),
                }
            })?;
        if !stored.tasks.is_empty() {
            // Each task's checkpoint names its own task; the run has them all.
            stored.task.clear();
            stored.data = PathBuf::new();
        }
        stored.epochs = config.epochs;
        stored.patience = config.patience;
        stored.out = config.out.clone();
        config = stored;
        Some(ckpts)
    } else {
        if last_dir.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run; continue it with --resume or choose another --out",
                out.display()
            )));
        }
        if out.join(SWEEP_FILE).exists() {
            return Err(Error::InvalidArgument(format!(
                "{} holds a sweep (its runs are in its point folders); choose another --out",
                out.display()
            )));
        }
        None
    };
    config.validate()?;
    let report_quiet = options.quiet;
    let mut reporter = Reporter::new(report_quiet);

    let backbone = Backbone::load(&config.model)?;
    let bert = &backbone.model.config;
    fit_max_seq_len(&mut config, bert, &reporter)?;
    let layers = method_layers(config.method, &config.prefix_layers, bert.num_hidden_layers)?;
    let prefix_config = PrefixConfig {
        method: config.method,
        len: config.prefix_len,
        projection: config.prefix_projection,
        hidden_size: config.prefix_hidden_size,
        layers,
    };

    let mut tasks = load_tasks(
        &config,
        &backbone,
        &prefix_config,
        resumed.as_deref(),
        &last_dir,
        &reporter,
    )?;
    let multi = tasks.len() > 1;
    let has_dev = tasks.iter().all(|t| t.data.has_dev());
    if let Some(without) = tasks.iter().find(|t| !t.data.has_dev()) {
        if tasks.iter().any(|t| t.data.has_dev()) {
            return Err(Error::InvalidArgument(format!(
                "{} has no labelled dev split while the other tasks do; a multi-task run \
                 evaluates all or none: add --dev-from-train 0.1 to hold out part of each train split",
                without.data.task_name()
            )));
        }
    }
    let adamw = AdamWConfig {
        lr: config.lr,
        weight_decay: config.weight_decay,
        ..AdamWConfig::default()
    };
    let (prefix, heads, mut opt, mut state) = match resumed {
        Some(ckpts) => resume_from(&ckpts, &tasks, &backbone, &config, &last_dir, adamw)?,
        None => {
            let (prefix, heads) =
                fresh_start(&config, &backbone, prefix_config, &tasks, &reporter)?;
            let state = TrainerState {
                seed: config.seed,
                ..TrainerState::default()
            };
            (prefix, heads, AdamW::new(adamw), state)
        }
    };
    let mut model = PromptModel {
        backbone: Arc::clone(&backbone.model),
        prefix,
        head: heads[0].0.clone(),
        gpu: None,
    };
    let mut heads = TaskHeads::new(&mut model, &opt, heads);
    // A resumed multi-task run's per-task bests, from its history.
    for task in &mut tasks {
        let metric = task.data.main_metric().to_string();
        task.best = state
            .history
            .iter()
            .filter_map(|h| task_dev(h, &task.slug)[&metric].as_f64())
            .reduce(f64::max);
    }
    model.use_compute(options.compute)?;
    let trainable = model
        .params_mut()
        .iter()
        .map(|p| p.value.len())
        .sum::<usize>()
        + heads.parked_parameters();
    let frozen = backbone.model.num_parameters();
    let prompt = &model.prefix.config;
    let place = match prompt.method {
        PromptMethod::PTuningV2 => format!("at {} layers", prompt.layers.len()),
        PromptMethod::PromptTuning => "before the input".into(),
    };
    let mlp = match prompt.projection {
        true => format!(" through an MLP of {}", prompt.hidden_size),
        false => String::new(),
    };
    reporter.line(&format!(
        "{}, {} virtual tokens {place}{mlp}: {trainable} trainable parameters, {:.2}% of the frozen backbone's {frozen}",
        match prompt.method {
            PromptMethod::PTuningV2 => "P-Tuning v2",
            PromptMethod::PromptTuning => "prompt tuning",
        },
        prompt.len,
        100.0 * trainable as f64 / frozen as f64
    ));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let mut log = MetricsLog::open(&out, state.epoch_completed)?;

    let batch_size = config.batch_size;
    let steps_per_epoch: u64 = tasks
        .iter()
        .map(|t| t.data.train_len().div_ceil(batch_size) as u64)
        .sum();
    let total_steps = steps_per_epoch * config.epochs as u64;
    let warmup = (config.warmup_ratio as f64 * total_steps as f64).ceil() as u64;
    let schedule = Schedule::parse(&config.scheduler, warmup, total_steps, config.gamma)?;
    let dropout_p = config.dropout;
    let attention_p = bert.attention_probs_dropout_prob;
    let mut acts = Activations::default();
    let start = Instant::now();
    let mut trained_examples = 0usize;
    // The metric that picks best/ and drives patience: the task's own, or
    // for several tasks the mean of their main metrics.
    let main_metric = if multi {
        MEAN_METRIC.to_string()
    } else {
        tasks[0].data.main_metric().to_string()
    };
    let main_metric = main_metric.as_str();

    if state.epoch_completed >= config.epochs {
        reporter.line(&format!(
            "the run is complete (epoch {} of {}): nothing to train; --epochs N goes on to N",
            state.epoch_completed, config.epochs
        ));
    }
    // Paused by --stop-after-epoch before its last epoch: not finished.
    let mut paused = false;
    for epoch in state.epoch_completed..config.epochs {
        let epoch_start = Instant::now();
        let batches = epoch_batches(&tasks, batch_size, config.seed, epoch);
        reporter.start_epoch(epoch + 1, config.epochs, steps_per_epoch);
        let mut loss_sum = 0.0f64;
        let mut lr = config.lr;
        let mut seen = 0usize;
        for (k, chunk) in &batches {
            if options
                .stop
                .is_some_and(|stop| stop.load(Ordering::Relaxed))
            {
                reporter.end_epoch();
                let kept = match state.epoch_completed {
                    0 => "no epoch had ended, so the run starts over".to_string(),
                    done => format!(
                        "{} holds epoch {done}: continue with --resume",
                        last_dir.display()
                    ),
                };
                return Err(Error::Interrupted(format!(
                    "at epoch {}, step {}; {kept}",
                    epoch + 1,
                    state.global_step
                )));
            }
            heads.activate(*k, &mut model, &mut opt);
            let (batch, targets) = tasks[*k].data.train_batch(chunk)?;
            let dropout = DropoutConfig {
                hidden: dropout_p,
                attention: attention_p,
                seed: derive_seed(config.seed, DROPOUT, state.global_step),
            };
            model.zero_grad();
            let step = model.forward_backward(&batch, targets.as_targets(), &dropout, &mut acts)?;
            if !step.loss.is_finite() {
                reporter.end_epoch();
                let kept = if last_dir.exists() {
                    format!("the last good checkpoint is {} (continue with --resume, perhaps with a lower --lr)", last_dir.display())
                } else {
                    "no checkpoint had been written yet; try a lower --lr".to_string()
                };
                return Err(Error::Training(format!(
                    "the loss became {} at epoch {}, step {}; {kept}",
                    step.loss,
                    epoch + 1,
                    state.global_step
                )));
            }
            lr = schedule.lr(config.lr, state.global_step, epoch);
            model.optimizer_step(&mut opt, lr, config.max_grad_norm)?;
            state.global_step += 1;
            loss_sum += step.loss as f64 * chunk.len() as f64;
            seen += chunk.len();
            trained_examples += chunk.len();
            reporter.step(
                loss_sum / seen as f64,
                lr,
                seen as f64 / epoch_start.elapsed().as_secs_f64(),
            );
        }
        reporter.end_epoch();
        // A prefix table trained on a GPU comes back for evaluation and the
        // checkpoints.
        model.sync_host(&mut opt)?;
        let train_loss = loss_sum / seen.max(1) as f64;
        state.epoch_completed = epoch + 1;
        state.adamw_step = opt.step;
        log.append(&MetricsEvent {
            event: EventKind::Epoch,
            epoch: epoch + 1,
            step: state.global_step,
            loss: Some(train_loss),
            lr: Some(lr as f64),
            metrics: Default::default(),
        })?;

        let mut line = format!(
            "epoch {:>3}/{}  loss {train_loss:.4}  lr {lr:.2e}",
            epoch + 1,
            config.epochs
        );
        let mut history = serde_json::json!({"epoch": epoch + 1, "step": state.global_step, "train_loss": train_loss, "lr": lr});
        if has_dev {
            let (metrics, dev) = evaluate_tasks(
                &mut tasks,
                &mut heads,
                &mut model,
                &mut opt,
                &best_dir,
                config.eval_batch_size,
                &mut line,
            )?;
            log.append(&MetricsEvent {
                event: EventKind::Eval,
                epoch: epoch + 1,
                step: state.global_step,
                loss: None,
                lr: None,
                metrics: metrics.clone(),
            })?;
            let value = metrics.get(main_metric).copied().unwrap_or(f64::NAN);
            // The first epoch reaching the highest value is the best one.
            let improved = state.best_metric.is_none_or(|best| value > best);
            if improved {
                state.best_metric = Some(value);
                state.best_epoch = Some(epoch + 1);
                state.epochs_without_improvement = 0;
                if !multi {
                    save_checkpoint(
                        &best_dir,
                        &CheckpointRef {
                            info: &tasks[0].info,
                            prefix: &model.prefix,
                            head: &model.head,
                            training: None,
                        },
                    )?;
                }
            } else {
                state.epochs_without_improvement += 1;
            }
            if multi {
                line.push_str(&format!("  {MEAN_METRIC} {value:.4}"));
            } else {
                for (k, v) in &metrics {
                    line.push_str(&format!("  dev {k} {v:.4}"));
                }
            }
            if improved {
                line.push_str("  (best)");
            }
            history["dev"] = dev;
        }
        state.history.push(history);
        save_last(&last_dir, &tasks, &heads, &model, &opt, &state)?;
        let points: Vec<EpochPoint> = state
            .history
            .iter()
            .map(|h| EpochPoint {
                epoch: h["epoch"].as_u64().unwrap_or(0) as usize,
                train_loss: h["train_loss"].as_f64().unwrap_or(f64::NAN),
                dev_metric: h["dev"][main_metric].as_f64(),
                metric_name: main_metric.to_string(),
            })
            .collect();
        write_training_curve(&out.join("training_curve.svg"), &points)?;
        let seconds = epoch_start.elapsed().as_secs_f64();
        line.push_str(&format!(
            "  {seconds:.1} s  {:.0} ex/s",
            seen as f64 / seconds
        ));
        reporter.line(&line);
        if options.stop_after_epoch == Some(epoch + 1) {
            reporter.line(&format!(
                "paused after epoch {}: continue with --resume",
                epoch + 1
            ));
            paused = epoch + 1 < config.epochs;
            break;
        }
        if let Some(patience) = config.patience {
            if state.epochs_without_improvement >= patience {
                reporter.line(&format!(
                    "early stop: no better dev {main_metric} for {patience} epochs"
                ));
                break;
            }
        }
    }

    let seconds = start.elapsed().as_secs_f64();
    let best_dev = state
        .best_epoch
        .and_then(|e| {
            state
                .history
                .iter()
                .find(|h| h["epoch"].as_u64() == Some(e as u64))
        })
        .map(|h| h["dev"].clone());
    let task_names: Vec<&str> = tasks.iter().map(|t| t.data.task_name()).collect();
    let mut summary = serde_json::json!({
        "task": task_names.join(","),
        "run_dir": out,
        "backbone": config.model,
        "main_metric": main_metric,
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        "best_dev_metrics": best_dev,
        "epochs_completed": state.epoch_completed,
        "global_step": state.global_step,
        "seconds_this_session": seconds,
        "train_examples_per_s_this_session": trained_examples as f64 / seconds.max(1e-9),
        "method": model.prefix.config.method,
        "trainable_parameters": trainable,
        "backbone_parameters": frozen,
        "paused": paused,
        "history": state.history,
    });
    if multi {
        summary["tasks"] = tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "task": t.data.task_name(),
                    "slug": t.slug,
                    "adapter": best_dir.join(&t.slug),
                    "main_metric": t.data.main_metric(),
                    "best_metric": t.best,
                    "data": t.data.summary(),
                })
            })
            .collect();
    } else if let (Some(fields), Some(counts)) =
        (summary.as_object_mut(), tasks[0].data.summary().as_object())
    {
        fields.extend(counts.clone());
    }
    write_summary(&out, &summary)?;
    if !report_quiet {
        print_summary(&summary, main_metric);
    }
    Ok(summary)
}

/// Checks that --max-seq-len tokens fit the model's positions after the
/// prompt, so that no adapter trains on lengths it cannot predict at: a
/// length given is refused with what fits; the task's default is lowered
/// to what fits (and stored with the run).
fn fit_max_seq_len(config: &mut TrainConfig, bert: &BertConfig, reporter: &Reporter) -> Result<()> {
    let room = bert.tokens_after_prompt(config.prefix_len);
    let p = config.prefix_len;
    let positions = bert.max_position_embeddings;
    if room < 8 {
        return Err(Error::InvalidArgument(format!(
            "--prefix-len {p} leaves {room} of the model's {positions} positions for the tokens; lower --prefix-len"
        )));
    }
    let longest = config
        .task_configs()
        .iter()
        .map(|(_, t)| t.max_seq_len())
        .max()
        .unwrap_or(0);
    if longest <= room {
        return Ok(());
    }
    if let Some(given) = config.max_seq_len {
        return Err(Error::InvalidArgument(format!(
            "--max-seq-len {given} with --prefix-len {p} needs more than the model's {positions} positions: \
             pass --max-seq-len {room} or less, or a shorter prompt"
        )));
    }
    reporter.line(&format!(
        "--max-seq-len {room}: what the model's {positions} positions leave after a prompt of {p} (the default is {longest})"
    ));
    config.max_seq_len = Some(room);
    Ok(())
}

/// Each task's data (with the label set a resumed run stored) and the
/// metadata its checkpoints carry.
fn load_tasks(
    config: &TrainConfig,
    backbone: &Backbone,
    prefix_config: &PrefixConfig,
    resumed: Option<&[(String, Checkpoint)]>,
    last_dir: &Path,
    reporter: &Reporter,
) -> Result<Vec<RunTask>> {
    let bert = &backbone.model.config;
    let mut tasks = Vec::new();
    for (slug, task_config) in config.task_configs() {
        let stored = match resumed {
            Some(ckpts) => Some(
                ckpts
                    .iter()
                    .find(|(name, _)| *name == slug)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "--resume: {} has no checkpoint of task {slug}",
                            last_dir.display()
                        ))
                    })?
                    .1
                    .info
                    .label_names
                    .clone(),
            ),
            None => None,
        };
        let data = load_task_data(
            &task_config,
            &backbone.tokenizer,
            stored,
            DevSource::Training,
        )?;
        let head = data.head();
        reporter.line(&format!(
            "{}; backbone {} ({} layers, hidden {})",
            data.describe(),
            backbone.dir.display(),
            bert.num_hidden_layers,
            bert.hidden_size
        ));
        let info = RunInfo {
            format_version: FORMAT_VERSION,
            task: data.task_name().to_string(),
            head: head.kind,
            label_names: head.label_names.clone(),
            backbone: BackboneInfo {
                name_or_path: config.model.clone(),
                model_type: format!("{:?}", bert.model_type).to_lowercase(),
                hidden_size: bert.hidden_size,
                num_layers: bert.num_hidden_layers,
                num_heads: bert.num_attention_heads,
                weights_hash: backbone.hash.clone(),
            },
            tokenizer: TokenizerInfo {
                max_seq_len: task_config.max_seq_len(),
                truncation: "longest_first".into(),
            },
            prefix: PrefixInfo::from(prefix_config),
            hyperparameters: task_config.to_json(),
            created_by: created_by(),
        };
        tasks.push(RunTask {
            slug,
            data,
            info,
            best: None,
        });
    }
    Ok(tasks)
}

/// A resumed run's prompt, heads (with their AdamW moments), optimizer
/// and loop state, from every task's checkpoint in last/.
fn resume_from(
    ckpts: &[(String, Checkpoint)],
    tasks: &[RunTask],
    backbone: &Backbone,
    config: &TrainConfig,
    last_dir: &Path,
    adamw: AdamWConfig,
) -> Result<(PrefixEncoder, Vec<TaskHead>, AdamW, TrainerState)> {
    // The prompt, the optimizer and the loop state are every checkpoint's
    // (task 0's are taken); each adds its head and the head's moments,
    // which follow the prompt's.
    let mut heads = Vec::new();
    let mut shared = None;
    for task in tasks {
        let (_, ckpt) = ckpts
            .iter()
            .find(|(name, _)| *name == task.slug)
            .expect("every task's checkpoint was found above");
        if ckpt.info.backbone.weights_hash != backbone.hash {
            return Err(Error::InvalidArgument(format!(
                "--resume: the run was trained on backbone {} (weights {}), not {} (weights {})",
                ckpt.info.backbone.name_or_path,
                ckpt.info.backbone.weights_hash,
                config.model,
                backbone.hash
            )));
        }
        let (opt_state, trainer_state) = ckpt.training.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--resume: {} has no training state",
                last_dir.join(&task.slug).display()
            ))
        })?;
        let n_prompt = ckpt.prefix.params().len();
        let moments = opt_state.moments.get(n_prompt..).unwrap_or_default();
        heads.push((ckpt.head.clone(), moments.to_vec()));
        shared.get_or_insert_with(|| {
            (
                ckpt.prefix.clone(),
                opt_state.clone(),
                trainer_state.clone(),
            )
        });
    }
    let (prefix, opt_state, trainer_state) = shared.expect("a run has at least one task");
    Ok((prefix, heads, opt_state.into_adamw(adamw), trainer_state))
}

/// A new run's prompt (random, or --init-from's) and heads (fresh, or the
/// source adapter's for the same task and labels).
fn fresh_start(
    config: &TrainConfig,
    backbone: &Backbone,
    prefix_config: PrefixConfig,
    tasks: &[RunTask],
    reporter: &Reporter,
) -> Result<(PrefixEncoder, Vec<TaskHead>)> {
    let bert = &backbone.model.config;
    let specs: Vec<(&str, HeadSpec)> = tasks
        .iter()
        .map(|t| (t.data.task_name(), t.data.head()))
        .collect();
    let (prefix, warm_heads) = match &config.init_from {
        Some(from) => {
            let warm = warm_start(
                from,
                (&config.model, &backbone.hash),
                &prefix_config,
                &specs,
            )?;
            let heads: Vec<String> = tasks
                .iter()
                .zip(&warm.heads)
                .map(|(task, head)| {
                    let which = if head.is_some() {
                        "head too (same task and labels)"
                    } else {
                        "fresh head"
                    };
                    match tasks.len() {
                        1 => which.to_string(),
                        _ => format!("{}: {which}", task.slug),
                    }
                })
                .collect();
            reporter.line(&format!(
                "prompt from {} ({}); {}",
                warm.dir.display(),
                warm.source_task,
                heads.join(", ")
            ));
            (warm.prefix, warm.heads)
        }
        None => {
            let seed = derive_seed(config.seed, INIT_PREFIX, 0);
            let mut prefix = PrefixEncoder::new(
                prefix_config,
                bert.hidden_size,
                bert.num_hidden_layers,
                seed,
            )?;
            let init = config.prompt_init.clone().unwrap_or_default();
            let text_ids = init.text_ids(&backbone.tokenizer, bert.vocab_size)?;
            let word = &backbone.model.embeddings.word_embeddings;
            prefix.init_prompt(&init, word, &text_ids, seed);
            (prefix, vec![None; tasks.len()])
        }
    };
    let heads = specs
        .iter()
        .zip(warm_heads)
        .enumerate()
        .map(|(k, ((_, spec), warm))| {
            // Task 0's seed is a single-task run's.
            let head = warm.unwrap_or_else(|| {
                ClassificationHead::for_kind(
                    spec.kind,
                    bert.hidden_size,
                    spec.outputs,
                    derive_seed(config.seed, INIT_HEAD, k as u64),
                )
            });
            (head, Vec::new())
        })
        .collect();
    Ok((prefix, heads))
}

/// Every task's dev metrics after an epoch, and what the history keeps of
/// them: a single task's metrics as they are; for several, each task's
/// under its name ("<task>/<metric>" in the returned map) with the mean of
/// their main metrics, and each task's best/ saved when its main metric
/// improves (`line` gets each task's value).
fn evaluate_tasks(
    tasks: &mut [RunTask],
    heads: &mut TaskHeads,
    model: &mut PromptModel,
    opt: &mut AdamW,
    best_dir: &Path,
    batch_size: usize,
    line: &mut String,
) -> Result<(BTreeMap<String, f64>, serde_json::Value)> {
    let tasks_count = tasks.len();
    let multi = tasks_count > 1;
    // Each task's metrics; for several, under the task's name, with
    // the mean of their main metrics beside them.
    let mut metrics = BTreeMap::new();
    let mut dev = serde_json::Map::new();
    let mut mean = 0.0;
    for (k, task) in tasks.iter_mut().enumerate() {
        heads.activate(k, model, opt);
        let m = task.data.evaluate_dev(model, batch_size)?;
        let value = m.get(task.data.main_metric()).copied().unwrap_or(f64::NAN);
        mean += value / tasks_count as f64;
        if multi {
            // The first epoch reaching a task's highest value is its best.
            if task.best.is_none_or(|best| value > best) {
                task.best = Some(value);
                save_checkpoint(
                    &best_dir.join(&task.slug),
                    &CheckpointRef {
                        info: &task.info,
                        prefix: &model.prefix,
                        head: &model.head,
                        training: None,
                    },
                )?;
            }
            line.push_str(&format!(
                "  {} {} {value:.4}",
                task.slug,
                task.data.main_metric()
            ));
            dev.insert(
                task.slug.clone(),
                serde_json::to_value(&m).expect("metrics serialize"),
            );
            for (name, v) in m {
                metrics.insert(format!("{}/{name}", task.slug), v);
            }
        } else {
            metrics = m;
        }
    }
    if multi {
        metrics.insert(MEAN_METRIC.to_string(), mean);
        dev.insert(MEAN_METRIC.to_string(), serde_json::json!(mean));
        Ok((metrics, serde_json::Value::Object(dev)))
    } else {
        let dev = serde_json::to_value(&metrics).expect("metrics serialize");
        Ok((metrics, dev))
    }
}

/// The dev metrics of task `slug` in one epoch's history entry (a
/// single-task run's, slug "", are the entry's `dev` itself).
fn task_dev<'a>(entry: &'a serde_json::Value, slug: &str) -> &'a serde_json::Value {
    match slug {
        "" => &entry["dev"],
        s => &entry["dev"][s],
    }
}

/// The batches of one epoch: each task's train units shuffled by (seed,
/// epoch, task) and cut into batches, then, for several tasks, the batches
/// shuffled across tasks. A single task's epoch is the plain shuffle.
fn epoch_batches(
    tasks: &[RunTask],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<(usize, Vec<usize>)> {
    let k_count = tasks.len() as u64;
    let mut batches: Vec<(usize, Vec<usize>)> = Vec::new();
    for (k, task) in tasks.iter().enumerate() {
        let order = shuffled(
            task.data.train_len(),
            derive_seed(seed, SHUFFLE, epoch as u64 * k_count + k as u64),
        );
        batches.extend(order.chunks(batch_size).map(|c| (k, c.to_vec())));
    }
    if tasks.len() > 1 {
        let mix = shuffled(batches.len(), derive_seed(seed, TASK_MIX, epoch as u64));
        let mut slots: Vec<Option<(usize, Vec<usize>)>> = batches.into_iter().map(Some).collect();
        batches = mix.iter().filter_map(|&i| slots[i].take()).collect();
    }
    batches
}

/// Writes last/: the run's checkpoint, or for several tasks one per task
/// (the shared prompt, the task's head and its optimizer state), as one.
fn save_last(
    dir: &Path,
    tasks: &[RunTask],
    heads: &TaskHeads,
    model: &PromptModel,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    if tasks.len() == 1 {
        return save_checkpoint(
            dir,
            &CheckpointRef {
                info: &tasks[0].info,
                prefix: &model.prefix,
                head: &model.head,
                training: Some((opt, state)),
            },
        );
    }
    let parts: Vec<(&ClassificationHead, AdamW)> = (0..tasks.len())
        .map(|k| heads.checkpoint_parts(k, model, opt))
        .collect();
    let set: Vec<(&str, CheckpointRef<'_>)> = tasks
        .iter()
        .zip(&parts)
        .map(|(task, (head, task_opt))| {
            (
                task.slug.as_str(),
                CheckpointRef {
                    info: &task.info,
                    prefix: &model.prefix,
                    head,
                    training: Some((task_opt, state)),
                },
            )
        })
        .collect();
    save_checkpoint_set(dir, &set)
}

/// The table printed at the end of a run.
fn print_summary(summary: &serde_json::Value, main_metric: &str) {
    println!();
    println!(
        "{:>6}  {:>10}  {:>10}",
        "epoch",
        "train loss",
        format!("dev {main_metric}")
    );
    for h in summary["history"].as_array().into_iter().flatten() {
        let dev = h["dev"][main_metric]
            .as_f64()
            .map_or("-".to_string(), |v| format!("{v:.4}"));
        println!(
            "{:>6}  {:>10.4}  {:>10}",
            h["epoch"].as_u64().unwrap_or(0),
            h["train_loss"].as_f64().unwrap_or(f64::NAN),
            dev
        );
    }
    let run = summary["run_dir"].as_str().unwrap_or("");
    if let Some(tasks) = summary["tasks"].as_array() {
        for t in tasks {
            println!(
                "{}: best dev {} {:.4}; adapter in {}",
                t["task"].as_str().unwrap_or(""),
                t["main_metric"].as_str().unwrap_or(""),
                t["best_metric"].as_f64().unwrap_or(f64::NAN),
                t["adapter"].as_str().unwrap_or("")
            );
        }
        println!("resumable state in {run}/last");
        return;
    }
    match summary["best_epoch"].as_u64() {
        Some(e) => println!(
            "best dev {main_metric} {:.4} at epoch {e}; adapter in {run}/best, resumable state in {run}/last",
            summary["best_metric"].as_f64().unwrap_or(f64::NAN)
        ),
        None => println!("no dev evaluation; adapter and resumable state in {run}/last"),
    }
}
