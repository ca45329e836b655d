//! The trainer end to end: a short real CB run beats the majority class and
//! resumes exactly; a custom task on the tiny model covers the run folder,
//! evaluation, prediction and the errors a user can run into.

use std::path::{Path, PathBuf};

use ptuning::tasks::features::featurize;
use ptuning::training::adapter::Adapter;
use ptuning::training::evaluate::{evaluate, predict};
use ptuning::training::trainer::{train, TrainConfig, TrainOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data_root() -> PathBuf {
    std::env::var_os("PTUNING_DATA").map_or_else(|| root().join("../shared/data"), PathBuf::from)
}

fn quiet() -> TrainOptions {
    TrainOptions {
        quiet: true,
        ..TrainOptions::default()
    }
}

#[test]
fn cb_short_run_beats_the_majority_class_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        task: "superglue/cb".into(),
        data: data_root().join("superglue/CB"),
        out: tmp.path().join("full"),
        epochs: 3,
        seed: 7,
        ..TrainConfig::default()
    };
    let full = train(&config, quiet()).unwrap();
    // CB val's majority class (contradiction) is 28 of 56: a model whose prefix
    // or head gradient were broken stays at or below it.
    let best = full["best_metric"].as_f64().unwrap();
    assert!(best >= 0.6, "dev accuracy {best} after 3 epochs");

    let paused = TrainConfig {
        out: tmp.path().join("paused"),
        ..config.clone()
    };
    let options = TrainOptions {
        stop_after_epoch: Some(1),
        ..quiet()
    };
    train(&paused, options).unwrap();
    let err = train(&paused, quiet()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let resumed = train(
        &paused,
        TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(full["history"], resumed["history"]);
    assert_eq!(full["best_epoch"], resumed["best_epoch"]);
    let read = |run: &str, file: &str| std::fs::read(tmp.path().join(run).join(file)).unwrap();
    assert_eq!(
        read("full", "best/adapter_model.safetensors"),
        read("paused", "best/adapter_model.safetensors")
    );
    assert_eq!(
        read("full", "last/training_state.safetensors"),
        read("paused", "last/training_state.safetensors")
    );
    // metrics.jsonl continues across the pause: one epoch and one eval line per epoch.
    let lines = String::from_utf8(read("paused", "metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
    for file in [
        "summary.json",
        "training_curve.svg",
        "best/ptuning.json",
        "best/adapter_config.json",
    ] {
        assert!(
            tmp.path().join("full").join(file).is_file(),
            "{file} missing"
        );
    }
}

/// A tiny sentiment-like CSV task on the tiny model; words the tiny vocabulary
/// lacks become [UNK], which is fine for the plumbing under test.
fn tiny_task(dir: &Path, with_dev: bool) -> TrainConfig {
    let rows = "text,label\n\"a b c\",pos\n\"d e f\",neg\n\"a a b\",pos\n\"e e d\",neg\n\"c b a\",pos\n\"f d e\",neg\n";
    std::fs::write(dir.join("train.csv"), rows).unwrap();
    if with_dev {
        std::fs::write(
            dir.join("dev.csv"),
            "text,label\n\"a b\",pos\n\"d f\",neg\n",
        )
        .unwrap();
    }
    TrainConfig {
        task: "custom/classification".into(),
        data: dir.to_path_buf(),
        out: dir.join("run"),
        model: root()
            .join("tests/fixtures/tiny-bert")
            .display()
            .to_string(),
        epochs: 2,
        batch_size: 4,
        prefix_len: 4,
        max_seq_len: 32,
        ..TrainConfig::default()
    }
}

#[test]
fn a_custom_task_trains_evaluates_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let summary = train(&config, quiet()).unwrap();
    assert_eq!(summary["epochs_completed"], 2);
    let adapter = Adapter::load(&config.out.join("best"), None).unwrap();
    assert_eq!(adapter.info.label_names, vec!["neg", "pos"]);
    let examples = adapter.task.read(&tmp.path().join("dev.csv")).unwrap();
    let features = featurize(&adapter.backbone.tokenizer, &examples, 32).unwrap();
    let metrics = evaluate(
        &adapter.model,
        adapter.task.as_ref(),
        &examples,
        &features.features,
        8,
        0,
    )
    .unwrap();
    let best = summary["best_dev_metrics"]["accuracy"].as_f64().unwrap();
    assert_eq!(
        metrics["accuracy"], best,
        "eval of best/ reproduces the dev metric of its epoch"
    );
    let scored = predict(
        &adapter.model,
        adapter.task.kind(),
        &features.features,
        8,
        0,
    )
    .unwrap();
    for s in &scored {
        let total: f32 = s.scores.iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}

#[test]
fn without_a_dev_split_only_last_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), false);
    let summary = train(&config, quiet()).unwrap();
    assert!(summary["best_epoch"].is_null());
    assert!(config.out.join("last/ptuning.json").is_file());
    assert!(!config.out.join("best").exists());
    // A run folder without best/ serves its last/.
    Adapter::load(&config.out, None).unwrap();
}

#[test]
fn an_adapter_on_the_wrong_backbone_names_both() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    train(&config, quiet()).unwrap();
    let other = root()
        .join("tests/fixtures/tiny-roberta")
        .display()
        .to_string();
    let err = Adapter::load(&config.out.join("best"), Some(&other))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tiny-bert") && err.contains("tiny-roberta"),
        "{err}"
    );
}

#[test]
fn a_diverging_run_stops_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        lr: 1e30,
        max_grad_norm: 0.0,
        ..tiny_task(tmp.path(), true)
    };
    let err = train(&config, quiet()).unwrap_err().to_string();
    assert!(
        err.contains("the loss became") && err.contains("lower --lr"),
        "{err}"
    );
}

#[test]
fn bad_settings_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_task(tmp.path(), true);
    for (config, needle) in [
        (
            TrainConfig {
                epochs: 0,
                ..base.clone()
            },
            "--epochs",
        ),
        (
            TrainConfig {
                dropout: 1.5,
                ..base.clone()
            },
            "--dropout",
        ),
        (
            TrainConfig {
                task: "glue/nope".into(),
                ..base.clone()
            },
            "glue/nope",
        ),
        (
            TrainConfig {
                prefix_layers: "9".into(),
                ..base.clone()
            },
            "layer 9",
        ),
        (
            TrainConfig {
                scheduler: "cosine".into(),
                ..base.clone()
            },
            "cosine",
        ),
        (
            TrainConfig {
                data: tmp.path().join("missing"),
                ..base.clone()
            },
            "missing",
        ),
    ] {
        let err = train(&config, quiet()).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let toml = tmp.path().join("run.toml");
    std::fs::write(&toml, "task = \"superglue/cb\"\nlearning_rate = 0.1\n").unwrap();
    let err = TrainConfig::from_toml_file(&toml).unwrap_err().to_string();
    assert!(
        err.contains("learning_rate") && err.contains("run.toml"),
        "{err}"
    );
    std::fs::write(&toml, "task = \"superglue/cb\"\nlr = 0.05\nepochs = 7\n").unwrap();
    let config = TrainConfig::from_toml_file(&toml).unwrap();
    assert_eq!((config.lr, config.epochs, config.batch_size), (0.05, 7, 16));
}
