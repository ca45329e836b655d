//! Checkpoint folders, run logs and the training curve: round trips, atomic
//! replacement and crash recovery, and the errors a user can run into.

use std::path::Path;

use ptuning::model::heads::ClassificationHead;
use ptuning::model::heads::HeadKind;
use ptuning::model::param::Param;
use ptuning::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
use ptuning::model::weights::{save_tensors, WeightFile};
use ptuning::rng::Rng;
use ptuning::training::adamw::{AdamW, AdamWConfig};
use ptuning::training::checkpoint::{
    check_backbone, created_by, load_checkpoint, recover_checkpoint_dir, save_checkpoint,
    weights_hash, BackboneInfo, CheckpointRef, PrefixInfo, RunInfo, TokenizerInfo, TrainerState,
    ADAPTER_CONFIG, ADAPTER_HEAD_BIAS, ADAPTER_HEAD_WEIGHT, ADAPTER_WEIGHTS, FORMAT_VERSION,
    PROMPT_EMBEDDINGS, RUN_INFO, TRAINER_STATE, TRAINING_STATE,
};
use ptuning::training::curve::{render_training_curve, write_training_curve, EpochPoint};
use ptuning::training::run_files::{
    read_metrics, write_summary, EventKind, MetricsEvent, MetricsLog, METRICS_FILE, SUMMARY_FILE,
};

const HIDDEN: usize = 8;
const NUM_LAYERS: usize = 3;
const LABELS: usize = 3;

struct Model {
    info: RunInfo,
    prefix: PrefixEncoder,
    head: ClassificationHead,
    adamw: AdamW,
    trainer: TrainerState,
}

/// A small trained-looking model: a few AdamW steps on random gradients so
/// that parameters and both moments are all non-trivial.
fn model(projection: bool, layers: Vec<usize>, seed: u64) -> Model {
    // No layers: prompt tuning's prompt, in front of the input.
    let method = match layers.is_empty() {
        true => PromptMethod::PromptTuning,
        false => PromptMethod::PTuningV2,
    };
    let config = PrefixConfig {
        method,
        len: 4,
        projection,
        hidden_size: 6,
        layers,
    };
    let mut prefix = PrefixEncoder::new(config.clone(), HIDDEN, NUM_LAYERS, seed).unwrap();
    let mut head = ClassificationHead::new(HIDDEN, LABELS, seed + 1);
    let mut adamw = AdamW::new(AdamWConfig::default());
    let mut rng = Rng::new(seed + 2);
    for _ in 0..3 {
        let mut params = prefix.params_mut();
        params.extend(head.params_mut());
        for p in params.iter_mut() {
            rng.fill_normal(&mut p.grad, 1.0);
        }
        adamw.step(&mut params, 1e-2);
        params.into_iter().for_each(Param::zero_grad);
    }
    let info = RunInfo {
        format_version: FORMAT_VERSION,
        task: "mnli".into(),
        head: HeadKind::Classification,
        label_names: vec![
            "entailment".into(),
            "neutral".into(),
            "contradiction".into(),
        ],
        backbone: BackboneInfo {
            name_or_path: "tiny-bert".into(),
            model_type: "bert".into(),
            hidden_size: HIDDEN,
            num_layers: NUM_LAYERS,
            num_heads: 2,
            weights_hash: "0123456789abcdef".into(),
        },
        tokenizer: TokenizerInfo {
            max_seq_len: 128,
            truncation: "longest_first".into(),
        },
        prefix: PrefixInfo::from(&config),
        hyperparameters: serde_json::json!({"lr": 0.01, "epochs": 3, "batch_size": 16}),
        created_by: created_by(),
    };
    let trainer = TrainerState {
        epoch_completed: 2,
        global_step: 3,
        adamw_step: adamw.step,
        best_metric: Some(0.8125),
        best_epoch: Some(1),
        epochs_without_improvement: 1,
        seed,
        history: vec![
            serde_json::json!({"epoch": 1, "loss": 1.1, "accuracy": 0.8125}),
            serde_json::json!({"epoch": 2, "loss": 0.9, "accuracy": 0.8}),
        ],
    };
    Model {
        info,
        prefix,
        head,
        adamw,
        trainer,
    }
}

fn save(dir: &Path, m: &Model, training: bool) {
    save_checkpoint(
        dir,
        &CheckpointRef {
            info: &m.info,
            prefix: &m.prefix,
            head: &m.head,
            training: training.then_some((&m.adamw, &m.trainer)),
        },
    )
    .unwrap();
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_param_eq(a: &Param, b: &Param) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.shape, b.shape, "{}", a.name);
    assert_eq!(a.decay, b.decay, "{}", a.name);
    assert_eq!(bits(&a.value), bits(&b.value), "{}", a.name);
}

fn round_trip(projection: bool, layers: Vec<usize>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("last");
    let m = model(projection, layers, 11);
    save(&dir, &m, true);

    let ck = load_checkpoint(&dir).unwrap();
    assert_eq!(ck.info, m.info);
    assert_eq!(ck.prefix.config, m.prefix.config);
    assert_eq!(ck.prefix.params().len(), m.prefix.params().len());
    for (a, b) in ck.prefix.params().into_iter().zip(m.prefix.params()) {
        assert_param_eq(a, b);
    }
    assert_param_eq(&ck.head.weight, &m.head.weight);
    assert_param_eq(&ck.head.bias, &m.head.bias);
    let (opt, trainer) = ck.training.expect("last/ has a training state");
    assert_eq!(trainer, m.trainer);
    let adamw = opt.into_adamw(m.adamw.config.clone());
    assert_eq!(adamw.step, m.adamw.step);
    assert_eq!(adamw.moments.len(), m.adamw.moments.len());
    for (a, b) in adamw.moments.iter().zip(&m.adamw.moments) {
        assert_eq!(bits(&a.m), bits(&b.m));
        assert_eq!(bits(&a.v), bits(&b.v));
    }

    // The adapter holds the folded table and the head under PEFT's names.
    let adapter = WeightFile::open(&dir.join(ADAPTER_WEIGHTS)).unwrap();
    let folded = m.prefix.fold();
    let (table, shape) = adapter.tensor_f32(PROMPT_EMBEDDINGS).unwrap();
    assert_eq!(shape, vec![4, m.prefix.width()]);
    assert_eq!(bits(&table), bits(&folded.embedding.value));
    let (w, _) = adapter.tensor_f32(ADAPTER_HEAD_WEIGHT).unwrap();
    assert_eq!(bits(&w), bits(&m.head.weight.value));
    let (b, _) = adapter.tensor_f32(ADAPTER_HEAD_BIAS).unwrap();
    assert_eq!(bits(&b), bits(&m.head.bias.value));

    // Resuming continues with exactly the same updates.
    let mut original = (m.prefix.clone(), m.head.clone(), m.adamw.clone());
    let mut resumed = (ck.prefix.clone(), ck.head.clone(), adamw);
    for (prefix, head, opt) in [&mut original, &mut resumed] {
        let mut params = prefix.params_mut();
        params.extend(head.params_mut());
        for (i, p) in params.iter_mut().enumerate() {
            p.grad
                .iter_mut()
                .enumerate()
                .for_each(|(j, g)| *g = ((i * 7 + j) as f32).sin());
        }
        opt.step(&mut params, 1e-2);
    }
    for (a, b) in original.0.params().into_iter().zip(resumed.0.params()) {
        assert_param_eq(a, b);
    }
    assert_param_eq(&original.1.weight, &resumed.1.weight);
}

#[test]
fn plain_prefix_round_trips_bit_identically() {
    round_trip(false, vec![0, 1, 2]);
}

#[test]
fn reparameterized_prefix_round_trips_with_its_mlp() {
    round_trip(true, vec![1, 2]);
}

#[test]
fn prompt_tuning_round_trips_and_is_peft_prompt_tuning() {
    round_trip(false, vec![]);
    round_trip(true, vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let m = model(false, vec![], 5);
    save(&tmp.path().join("ck"), &m, false);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("ck/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "PROMPT_TUNING");
    assert_eq!(config["token_dim"], HIDDEN);
    assert!(config.get("prefix_projection").is_none());
    // A ptuning.json written before prompt tuning existed has no method:
    // P-Tuning v2.
    let m = model(false, vec![0, 1], 6);
    save(&tmp.path().join("old"), &m, false);
    let path = tmp.path().join("old/ptuning.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    info["prefix"].as_object_mut().unwrap().remove("method");
    std::fs::write(&path, info.to_string()).unwrap();
    let ck = load_checkpoint(&tmp.path().join("old")).unwrap();
    assert_eq!(ck.prefix.config.method, PromptMethod::PTuningV2);
}

#[test]
fn best_checkpoint_without_training_state_loads_the_folded_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("best");
    let m = model(true, vec![0, 2], 5);
    save(&dir, &m, false);
    assert!(!dir.join(TRAINING_STATE).exists());
    assert!(!dir.join(TRAINER_STATE).exists());

    let ck = load_checkpoint(&dir).unwrap();
    assert!(ck.training.is_none());
    assert!(ck.prefix.trans.is_none());
    assert!(!ck.prefix.config.projection);
    assert_eq!(
        bits(&ck.prefix.forward().past),
        bits(&m.prefix.forward().past)
    );
    assert_param_eq(&ck.head.weight, &m.head.weight);
}

#[test]
fn adapter_config_is_peft_prefix_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("best");
    let m = model(true, vec![0, 1, 2], 5);
    save(&dir, &m, false);
    let text = std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(c["peft_type"], "PREFIX_TUNING");
    assert_eq!(c["task_type"], "SEQ_CLS");
    assert_eq!(c["num_virtual_tokens"], 4);
    assert_eq!(c["token_dim"], HIDDEN);
    assert_eq!(c["num_layers"], NUM_LAYERS);
    assert_eq!(c["num_attention_heads"], 2);
    assert_eq!(c["num_transformer_submodules"], 1);
    assert_eq!(c["encoder_hidden_size"], 6);
    assert_eq!(c["prefix_projection"], false);
    assert_eq!(c["inference_mode"], true);
    assert_eq!(c["base_model_name_or_path"], "tiny-bert");
    assert!(c["revision"].is_null());
    assert_eq!(c["modules_to_save"], serde_json::json!(["classifier"]));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(RUN_INFO)).unwrap()).unwrap();
    assert_eq!(info["format_version"], 1);
    assert_eq!(info["head"], "classification");
    assert_eq!(info["tokenizer"]["truncation"], "longest_first");
}

#[test]
fn stale_tmp_folder_is_ignored_and_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("last");
    let stale = tmp.path().join("last.tmp-99999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join(ADAPTER_WEIGHTS), b"torn").unwrap();
    let m = model(false, vec![0, 1, 2], 1);
    save(&dir, &m, true);
    assert!(!stale.exists());
    load_checkpoint(&dir).unwrap();
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["last".to_string()]);
}

#[test]
fn existing_checkpoint_is_replaced_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("last");
    let first = model(false, vec![0, 1, 2], 1);
    save(&dir, &first, true);
    std::fs::write(dir.join("stray.txt"), b"from the old folder").unwrap();

    // The replacement has no training state: nothing of the old one may remain.
    let second = model(true, vec![2], 2);
    save(&dir, &second, false);
    assert!(!dir.join("stray.txt").exists());
    assert!(!dir.join(TRAINING_STATE).exists());
    let ck = load_checkpoint(&dir).unwrap();
    assert_eq!(ck.info.prefix, second.info.prefix);
    assert_eq!(
        bits(&ck.prefix.forward().past),
        bits(&second.prefix.forward().past)
    );
    let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(leftovers, 1);
}

#[test]
fn crash_between_renames_recovers_the_old_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("last");
    let old = model(false, vec![0, 1, 2], 1);
    save(&dir, &old, true);
    // Simulate the crash: `last` renamed to `last.old-<pid>`, the new folder
    // still under its temporary name, possibly incomplete.
    let old_dir = tmp.path().join("last.old-4242");
    std::fs::rename(&dir, &old_dir).unwrap();
    let new_tmp = tmp.path().join("last.tmp-4242");
    std::fs::create_dir(&new_tmp).unwrap();
    std::fs::write(new_tmp.join(RUN_INFO), b"{\"format_").unwrap();

    // A reader finds the old checkpoint without touching anything ...
    let ck = load_checkpoint(&dir).unwrap();
    assert_eq!(ck.training.unwrap().1, old.trainer);
    assert!(!dir.exists() && old_dir.exists());
    // ... start-up recovery puts it back and removes what is left.
    recover_checkpoint_dir(&dir).unwrap();
    assert!(dir.is_dir());
    assert!(!old_dir.exists());
    assert!(!new_tmp.exists());
    assert_eq!(
        load_checkpoint(&dir).unwrap().training.unwrap().1,
        old.trainer
    );

    // The same through save: recovery then a normal replacement.
    std::fs::rename(&dir, &old_dir).unwrap();
    let new = model(false, vec![0, 1, 2], 9);
    save(&dir, &new, true);
    assert!(!old_dir.exists());
    assert_eq!(
        load_checkpoint(&dir).unwrap().training.unwrap().1,
        new.trainer
    );
}

#[test]
fn missing_adapter_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("best");
    save(&dir, &model(false, vec![0], 1), false);
    std::fs::remove_file(dir.join(ADAPTER_WEIGHTS)).unwrap();
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains(ADAPTER_WEIGHTS), "{err}");
    assert!(err.contains("missing"), "{err}");

    let dir = tmp.path().join("last");
    save(&dir, &model(false, vec![0], 1), true);
    std::fs::remove_file(dir.join(TRAINER_STATE)).unwrap();
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains(TRAINER_STATE), "{err}");
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("best");
    let m = model(false, vec![0, 1], 1);
    save(&dir, &m, false);
    // A table one layer too narrow.
    let bad = vec![0.0f32; 4 * 2 * HIDDEN];
    save_tensors(
        &dir.join(ADAPTER_WEIGHTS),
        &[
            (PROMPT_EMBEDDINGS.to_string(), vec![4, 2 * HIDDEN], &bad),
            (
                ADAPTER_HEAD_WEIGHT.to_string(),
                m.head.weight.shape.clone(),
                &m.head.weight.value,
            ),
            (
                ADAPTER_HEAD_BIAS.to_string(),
                m.head.bias.shape.clone(),
                &m.head.bias.value,
            ),
        ],
    )
    .unwrap();
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains(PROMPT_EMBEDDINGS), "{err}");
    assert!(err.contains("[4, 16]") && err.contains("[4, 32]"), "{err}");

    // A head with the wrong number of labels.
    let w = vec![0.0f32; 2 * HIDDEN];
    let table = m.prefix.fold().embedding.value;
    save_tensors(
        &dir.join(ADAPTER_WEIGHTS),
        &[
            (PROMPT_EMBEDDINGS.to_string(), vec![4, 4 * HIDDEN], &table),
            (ADAPTER_HEAD_WEIGHT.to_string(), vec![2, HIDDEN], &w),
            (ADAPTER_HEAD_BIAS.to_string(), vec![2], &w[..2]),
        ],
    )
    .unwrap();
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(
        err.contains("classifier.bias") && err.contains("[3]"),
        "{err}"
    );
}

#[test]
fn unknown_format_version_and_corrupt_json_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("best");
    save(&dir, &model(false, vec![0], 1), false);
    let path = dir.join(RUN_INFO);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"format_version\": 1", "\"format_version\": 7"),
    )
    .unwrap();
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains("format_version 7"), "{err}");
    assert!(err.contains(RUN_INFO), "{err}");

    std::fs::write(&path, "{\n  \"format_version\": 1,\n  \"task\": \n").unwrap();
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains(RUN_INFO) && err.contains("line 4"), "{err}");
}

#[test]
fn inconsistent_checkpoint_is_refused_at_save_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = model(false, vec![0], 1);
    m.trainer.adamw_step += 1;
    let err = save_checkpoint(
        &tmp.path().join("last"),
        &CheckpointRef {
            info: &m.info,
            prefix: &m.prefix,
            head: &m.head,
            training: Some((&m.adamw, &m.trainer)),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("adamw_step"), "{err}");
    assert!(!tmp.path().join("last").exists());
}

#[test]
fn backbone_hash_is_stable_and_mismatch_names_both() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for (dir, value) in [(&a, 1.0f32), (&b, 2.0f32)] {
        std::fs::create_dir(dir).unwrap();
        save_tensors(
            &dir.join("model.safetensors"),
            &[("w".to_string(), vec![3], &[value, 0.5, 0.25])],
        )
        .unwrap();
    }
    let ha = weights_hash(&a).unwrap();
    assert_eq!(ha.len(), 16);
    assert!(ha.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(weights_hash(&a).unwrap(), ha);
    let hb = weights_hash(&b).unwrap();
    assert_ne!(ha, hb);

    let mut info = model(false, vec![0], 1).info;
    info.backbone.name_or_path = "bert-base-cased".into();
    info.backbone.weights_hash = ha.clone();
    check_backbone(&info, "other", &ha).unwrap();
    let err = check_backbone(&info, "roberta-base", &hb)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bert-base-cased") && err.contains("roberta-base"),
        "{err}"
    );
    assert!(err.contains(&ha) && err.contains(&hb), "{err}");

    let err = weights_hash(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn metrics_log_appends_across_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let event = |kind, epoch: usize, acc: f64| MetricsEvent {
        event: kind,
        epoch,
        step: epoch as u64 * 10,
        loss: Some(1.0 / epoch as f64),
        lr: (kind == EventKind::Epoch).then_some(0.01),
        metrics: [("accuracy".to_string(), acc)].into_iter().collect(),
    };
    {
        let mut log = MetricsLog::open(&run, 0).unwrap();
        log.append(&event(EventKind::Epoch, 1, 0.5)).unwrap();
        log.append(&event(EventKind::Eval, 1, 0.6)).unwrap();
    }
    // A crash mid-line, then a resumed run.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(run.join(METRICS_FILE))
            .unwrap();
        f.write_all(b"{\"event\": \"ep").unwrap();
    }
    {
        let mut log = MetricsLog::open(&run, 1).unwrap();
        log.append(&event(EventKind::Epoch, 2, 0.7)).unwrap();
    }
    let text = std::fs::read_to_string(run.join(METRICS_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["event"], "epoch");
    assert_eq!(first["epoch"], 1);
    assert_eq!(first["step"], 10);
    assert_eq!(first["lr"], 0.01);
    assert_eq!(first["accuracy"], 0.5);
    let eval: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(eval["event"], "eval");
    assert!(eval.get("lr").is_none());
    let last: MetricsEvent = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(last, event(EventKind::Epoch, 2, 0.7));

    // The torn line in the middle is an error when read back, with its number.
    let err = read_metrics(&run).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");

    // A crash after epoch 2's line but before its checkpoint: the run
    // resumes from epoch 1's, and epoch 2's line goes, so it is not written
    // twice; the torn line stays as it was.
    let mut log = MetricsLog::open(&run, 1).unwrap();
    log.append(&event(EventKind::Epoch, 2, 0.8)).unwrap();
    let text = std::fs::read_to_string(run.join(METRICS_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[2], "{\"event\": \"ep");
    let last: MetricsEvent = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(last, event(EventKind::Epoch, 2, 0.8));
    // A fresh run in a folder a failed start left starts a log of its own.
    drop(MetricsLog::open(&run, 0).unwrap());
    let text = std::fs::read_to_string(run.join(METRICS_FILE)).unwrap();
    assert_eq!(text, "");
    read_metrics(&run).unwrap();
}

#[test]
fn summary_is_written_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_summary(&run, &serde_json::json!({"best": 0.9})).unwrap();
    write_summary(&run, &serde_json::json!({"best": 0.95, "epoch": 3})).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(v["best"], 0.95);
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 1);
}

/// The `points` attribute of `<polyline class="{class}" ...>`, as (x, y) pairs.
fn polyline(svg: &str, class: &str) -> Vec<(f64, f64)> {
    let start = svg
        .find(&format!("<polyline class=\"{class}\""))
        .unwrap_or_else(|| panic!("no {class} polyline in\n{svg}"));
    let rest = &svg[start..];
    let attr = &rest[rest.find("points=\"").unwrap() + 8..];
    let attr = &attr[..attr.find('"').unwrap()];
    attr.split_whitespace()
        .map(|pair| {
            let (x, y) = pair.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

#[test]
fn training_curve_draws_one_point_per_epoch() {
    let losses = [0.69, 0.52, 0.41, 0.45, 0.30];
    let metrics = [Some(0.61), None, Some(0.74), Some(0.79), Some(0.77)];
    let epochs: Vec<EpochPoint> = losses
        .iter()
        .zip(metrics)
        .enumerate()
        .map(|(i, (&l, m))| EpochPoint {
            epoch: i + 1,
            train_loss: l,
            dev_metric: m,
            metric_name: "accuracy".into(),
        })
        .collect();
    let svg = render_training_curve(&epochs);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));

    let loss = polyline(&svg, "loss");
    assert_eq!(loss.len(), 5);
    assert!(
        loss.windows(2).all(|w| w[0].0 < w[1].0),
        "x follows the epochs"
    );
    // SVG y grows downwards: a higher loss is drawn higher up.
    for (i, j) in [(0, 1), (1, 2), (3, 2), (3, 4)] {
        assert!(
            (losses[i] > losses[j]) == (loss[i].1 < loss[j].1),
            "{i} vs {j}"
        );
    }
    let dev = polyline(&svg, "dev");
    assert_eq!(dev.len(), 4, "epochs without evaluation are skipped");
    assert!(dev[2].1 < dev[1].1 && dev[2].1 < dev[3].1);
    assert!(svg.contains("dev accuracy"));
    assert!(svg.contains("training loss"));
    assert!(svg.contains("best dev accuracy 0.7900 at epoch 4"));

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("training_curve.svg");
    write_training_curve(&path, &epochs).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);

    // Degenerate inputs still give a valid picture.
    let empty = render_training_curve(&[]);
    assert!(empty.contains("no dev evaluation") && !empty.contains("<polyline"));
    let one = render_training_curve(&epochs[..1]);
    assert_eq!(polyline(&one, "loss").len(), 1);
}
