//! The trainer end to end: a short real CB run beats the majority class and
//! resumes exactly; a custom task on the tiny model covers the run folder,
//! evaluation, prediction and the errors a user can run into.

use std::path::{Path, PathBuf};

use ptuning::model::prefix::PromptMethod;
use ptuning::training::adapter::Adapter;
use ptuning::training::data::Predictions;
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

/// Trains `config` for one epoch, checks that a second start without
/// --resume is refused, then resumes it to the end: the summary.
fn pause_and_resume(config: &TrainConfig) -> serde_json::Value {
    let options = TrainOptions {
        stop_after_epoch: Some(1),
        ..quiet()
    };
    train(config, options).unwrap();
    let err = train(config, quiet()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    train(
        config,
        TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap()
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
    let resumed = pause_and_resume(&paused);
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
        max_seq_len: Some(32),
        ..TrainConfig::default()
    }
}

/// `ptuning <command>` on [`tiny_task`]'s task and model, quietly.
fn tiny_cli_args(command: &str, config: &TrainConfig) -> Vec<String> {
    let data = config.data.display().to_string();
    [command, "--task", "custom/classification", "--data", &data]
        .into_iter()
        .chain(["--model", &config.model, "--prefix-len", "4"])
        .chain(["--max-seq-len", "32", "--quiet"])
        .map(str::to_string)
        .collect()
}

/// `ptuning train` for one epoch of [`tiny_task`]'s task into `out`: whether
/// it succeeded, and its standard error.
fn tiny_train(config: &TrainConfig, out: &Path, extra: &[&str]) -> (bool, String) {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args(tiny_cli_args("train", config))
        .args(["--epochs", "1", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    (
        run.status.success(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

#[test]
fn a_custom_task_trains_evaluates_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let summary = train(&config, quiet()).unwrap();
    assert_eq!(summary["epochs_completed"], 2);
    let adapter = Adapter::load(&config.out.join("best"), None).unwrap();
    assert_eq!(adapter.info.label_names, vec!["neg", "pos"]);
    let data = adapter.data_for(&tmp.path().join("dev.csv")).unwrap();
    let metrics = data.evaluate_dev(&adapter.model, 8).unwrap();
    let best = summary["best_dev_metrics"]["accuracy"].as_f64().unwrap();
    assert_eq!(
        metrics["accuracy"], best,
        "eval of best/ reproduces the dev metric of its epoch"
    );
    let Predictions::Lines(lines) = data.predict_dev(&adapter.model, 8).unwrap() else {
        panic!("a classifier predicts lines");
    };
    assert_eq!(lines.len(), 2);
    // `eval` without --data reads the dev split the adapter was trained on.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args(["eval", "--json", "--run"])
        .arg(config.out.join("best"))
        .output()
        .unwrap();
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(metrics["accuracy"].as_f64(), Some(best));
    for line in &lines {
        let scores: Vec<f64> = serde_json::from_value(line["scores"].clone()).unwrap();
        assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        assert!(["neg", "pos"].contains(&line["label"].as_str().unwrap()));
    }
}

/// A CoNLL-style file: word and tag columns.
fn conll(sentences: &[&[(&str, &str)]]) -> String {
    sentences
        .iter()
        .map(|s| {
            s.iter()
                .map(|(w, t)| format!("{w} {t}\n"))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_tagger_trains_evaluates_and_tags_raw_text() {
    // Deep prompts, and prompt tuning, whose tags are read past the prompt's rows.
    for method in [PromptMethod::PTuningV2, PromptMethod::PromptTuning] {
        tagger_round(method);
    }
}

fn tagger_round(method: PromptMethod) {
    let tmp = tempfile::tempdir().unwrap();
    let s1: &[(&str, &str)] = &[("a", "B-PER"), ("b", "I-PER"), ("c", "O"), ("d", "B-LOC")];
    let s2: &[(&str, &str)] = &[("d", "B-LOC"), ("c", "O"), ("a", "B-PER")];
    std::fs::write(tmp.path().join("train.txt"), conll(&[s1, s2, s1, s2])).unwrap();
    std::fs::write(tmp.path().join("dev.txt"), conll(&[s2, s1])).unwrap();
    let config = TrainConfig {
        task: "custom/conll".into(),
        data: tmp.path().to_path_buf(),
        out: tmp.path().join("run"),
        model: root()
            .join("tests/fixtures/tiny-bert")
            .display()
            .to_string(),
        method,
        epochs: 2,
        batch_size: 2,
        prefix_len: 4,
        lr: 5e-2,
        ..TrainConfig::default()
    };
    let summary = train(&config, quiet()).unwrap();
    let best = summary["best_dev_metrics"].clone();
    for key in ["f1", "precision", "recall", "strict_f1", "accuracy"] {
        assert!(best[key].is_number(), "{key} missing in {best}");
    }
    let adapter = Adapter::load(&config.out, None).unwrap();
    assert_eq!(
        adapter.info.label_names,
        vec!["O", "B-LOC", "B-PER", "I-PER"]
    );
    // The default 128 tokens do not fit tiny-bert's 64 positions after a
    // prompt of 4: the run keeps what does, and predicts within it.
    assert_eq!(adapter.info.tokenizer.max_seq_len, 60);
    let dev = adapter.data_for(&tmp.path().join("dev.txt")).unwrap();
    let metrics = dev.evaluate_dev(&adapter.model, 4).unwrap();
    assert_eq!(
        metrics["f1"], best["f1"],
        "{method:?}: eval of the best epoch"
    );
    let raw = tmp.path().join("raw.txt");
    // A line of 70 words: more than one window of 60 tokens.
    let long = vec!["a"; 70].join(" ");
    std::fs::write(&raw, format!("a b, c d\n{long}\n")).unwrap();
    let data = adapter.input_for(&raw).unwrap();
    let Predictions::Lines(lines) = data.predict_dev(&adapter.model, 4).unwrap() else {
        panic!("a tagger predicts lines");
    };
    assert_eq!(
        lines[0]["words"],
        serde_json::json!(["a", "b", ",", "c", "d"])
    );
    assert_eq!(lines[0]["tags"].as_array().unwrap().len(), 5);
    assert_eq!(lines[1]["tags"].as_array().unwrap().len(), 70);
    for e in lines[0]["entities"].as_array().unwrap() {
        let (start, end) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(&"a b, c d"[start..end], e["text"].as_str().unwrap());
    }
}

#[test]
fn a_qa_model_trains_and_writes_official_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let squad = serde_json::json!({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "a b c d e f", "qas": [
            {"id": "q1", "question": "a b", "answers": [{"text": "d e", "answer_start": 6}]},
            {"id": "q2", "question": "c", "answers": [{"text": "f", "answer_start": 10}]}]}]}]});
    std::fs::write(tmp.path().join("train.json"), squad.to_string()).unwrap();
    std::fs::write(tmp.path().join("dev.json"), squad.to_string()).unwrap();
    let config = TrainConfig {
        task: "qa/squad".into(),
        data: tmp.path().to_path_buf(),
        out: tmp.path().join("run"),
        model: root()
            .join("tests/fixtures/tiny-bert")
            .display()
            .to_string(),
        epochs: 2,
        batch_size: 2,
        prefix_len: 4,
        max_seq_len: Some(16),
        doc_stride: 4,
        ..TrainConfig::default()
    };
    let summary = train(&config, quiet()).unwrap();
    assert!(summary["best_dev_metrics"]["exact_match"].is_number());
    assert!(summary["train_windows"].as_u64().unwrap() >= 2);
    let adapter = Adapter::load(&config.out, None).unwrap();
    let data = adapter.data_for(&tmp.path().join("dev.json")).unwrap();
    let Predictions::Document(doc) = data.predict_dev(&adapter.model, 4).unwrap() else {
        panic!("QA predicts predictions.json");
    };
    let answers = doc.as_object().unwrap();
    assert_eq!(answers.len(), 2);
    for answer in answers.values() {
        assert!("a b c d e f".contains(answer.as_str().unwrap()));
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
                method: PromptMethod::PromptTuning,
                prefix_layers: "top:1".into(),
                ..base.clone()
            },
            "does not apply to --method prompt-tuning",
        ),
        (
            // tiny-bert has 64 positions: 62 tokens after 4 do not fit.
            TrainConfig {
                max_seq_len: Some(62),
                ..base.clone()
            },
            "pass --max-seq-len 60 or less",
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

#[test]
fn every_recipe_parses_and_names_a_known_task() {
    let mut count = 0;
    for entry in std::fs::read_dir(root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        let config = TrainConfig::from_toml_file(&path).unwrap();
        let family = ptuning::training::data::Family::of(&config.task);
        let known = match family {
            ptuning::training::data::Family::Sequence => {
                ptuning::tasks::known_tasks().contains(&config.task.as_str())
            }
            ptuning::training::data::Family::Tagging => {
                ptuning::tasks::tagging::known_tagging_tasks().contains(&config.task.as_str())
            }
            ptuning::training::data::Family::Qa => config.task.starts_with("qa/squad"),
        };
        assert!(known, "{}: unknown task {}", path.display(), config.task);
        count += 1;
    }
    assert!(count >= 3);
}

#[test]
fn dev_from_train_holds_out_part_of_train_for_model_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        dev_from_train: Some(0.34),
        ..tiny_task(tmp.path(), false)
    };
    let summary = train(&config, quiet()).unwrap();
    // 6 training rows: 2 held out for dev, 4 trained on.
    assert_eq!(summary["dev_examples"], 2);
    assert_eq!(summary["train_examples"], 4);
    assert!(summary["best_epoch"].is_u64());
    assert!(config.out.join("best/ptuning.json").is_file());
}

/// The prompt table and head of an adapter folder.
fn prompt_and_head(dir: &Path) -> (Vec<f32>, Vec<f32>) {
    let adapter = Adapter::load(dir, None).unwrap();
    let head = &adapter.model.head;
    let mut h = head.weight.value.clone();
    h.extend(&head.bias.value);
    (adapter.model.prefix.table().to_vec(), h)
}

#[test]
fn a_run_starts_from_another_runs_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_task(tmp.path(), true);
    let source_summary = train(&source, quiet()).unwrap();
    // An lr far below f32's resolution leaves every parameter where it
    // started: the target's best/ then holds what --init-from loaded.
    let frozen = |out: &str, task: TrainConfig| TrainConfig {
        out: tmp.path().join(out),
        init_from: Some(source.out.clone()),
        lr: 1e-30,
        epochs: 1,
        ..task
    };
    let same = frozen("same", source.clone());
    let summary = train(&same, quiet()).unwrap();
    assert_eq!(
        prompt_and_head(&same.out.join("best")),
        prompt_and_head(&source.out.join("best")),
        "the same task and labels take the prompt and the head"
    );
    assert_eq!(summary["best_metric"], source_summary["best_metric"]);
    let stored: TrainConfig = serde_json::from_value(
        ptuning::training::checkpoint::load_checkpoint(&same.out.join("last"))
            .unwrap()
            .info
            .hyperparameters,
    )
    .unwrap();
    assert_eq!(stored.init_from, Some(source.out.clone()));

    // Other labels: the prompt, and a fresh head.
    let other_data = tmp.path().join("other");
    std::fs::create_dir(&other_data).unwrap();
    let rows = "text,label\n\"a b c\",good\n\"d e f\",bad\n\"a a b\",good\n\"e e d\",bad\n";
    std::fs::write(other_data.join("train.csv"), rows).unwrap();
    std::fs::write(other_data.join("dev.csv"), rows).unwrap();
    let other = frozen(
        "other",
        TrainConfig {
            data: other_data,
            ..source.clone()
        },
    );
    train(&other, quiet()).unwrap();
    let (prompt, head) = prompt_and_head(&other.out.join("best"));
    let (source_prompt, source_head) = prompt_and_head(&source.out.join("best"));
    assert_eq!(prompt, source_prompt);
    assert_ne!(head, source_head, "labels bad/good are not neg/pos");
}

#[test]
fn a_reparameterized_prompt_starts_a_plain_run_folded() {
    let tmp = tempfile::tempdir().unwrap();
    let source = TrainConfig {
        prefix_projection: true,
        prefix_hidden_size: 16,
        ..tiny_task(tmp.path(), true)
    };
    train(&source, quiet()).unwrap();
    let plain = TrainConfig {
        out: tmp.path().join("plain"),
        init_from: Some(source.out.join("last")),
        lr: 1e-30,
        epochs: 1,
        ..tiny_task(tmp.path(), true)
    };
    train(&plain, quiet()).unwrap();
    let (prompt, _) = prompt_and_head(&plain.out.join("last"));
    let (folded, _) = prompt_and_head(&source.out.join("last"));
    assert_eq!(prompt, folded);
    // The MLP itself comes from last/ (best/ holds it folded).
    let mlp = TrainConfig {
        out: tmp.path().join("mlp"),
        init_from: Some(source.out.join("last")),
        ..source.clone()
    };
    train(&mlp, quiet()).unwrap();
}

#[test]
fn init_from_errors_say_what_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_task(tmp.path(), true);
    train(&source, quiet()).unwrap();
    let from = |out: &str, config: TrainConfig| TrainConfig {
        out: tmp.path().join(out),
        init_from: Some(source.out.clone()),
        ..config
    };
    for (config, needles) in [
        (
            from(
                "len",
                TrainConfig {
                    prefix_len: 6,
                    ..source.clone()
                },
            ),
            vec!["4 tokens", "--prefix-len 4", "--prefix-layers 0,1"],
        ),
        (
            from(
                "mlp",
                TrainConfig {
                    prefix_projection: true,
                    ..source.clone()
                },
            ),
            vec!["cannot be turned back", "last/"],
        ),
        (
            from(
                "method",
                TrainConfig {
                    method: PromptMethod::PromptTuning,
                    ..source.clone()
                },
            ),
            vec!["p-tuning-v2", "--method p-tuning-v2"],
        ),
        (
            from(
                "backbone",
                TrainConfig {
                    model: root()
                        .join("tests/fixtures/tiny-roberta")
                        .display()
                        .to_string(),
                    ..source.clone()
                },
            ),
            vec!["tiny-bert", "tiny-roberta", "--init-from"],
        ),
        (
            TrainConfig {
                init_from: Some(tmp.path().join("nowhere")),
                ..from("missing", source.clone())
            },
            vec!["--init-from", "nowhere", "not a checkpoint folder"],
        ),
    ] {
        let err = train(&config, quiet()).unwrap_err().to_string();
        for needle in needles {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(
            !config.out.join("last").exists(),
            "{}",
            config.out.display()
        );
    }
    // Between prompt-tuning runs only the length can differ.
    let shallow = TrainConfig {
        method: PromptMethod::PromptTuning,
        out: tmp.path().join("pt"),
        ..source.clone()
    };
    train(&shallow, quiet()).unwrap();
    let err = train(
        &TrainConfig {
            prefix_len: 6,
            out: tmp.path().join("pt-len"),
            init_from: Some(shallow.out.clone()),
            ..shallow.clone()
        },
        quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pass --prefix-len 4") && !err.contains("--prefix-layers"),
        "{err}"
    );
}

#[test]
fn the_cli_takes_init_from() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args([
            "train",
            "--task",
            "custom/classification",
            "--text-fields",
            "text",
        ])
        .args([
            "--label-field",
            "label",
            "--quiet",
            "--model",
            &config.model,
        ])
        .arg("--data")
        .arg(&config.data)
        .arg("--out")
        .arg(&config.out)
        .arg("--init-from")
        .arg(tmp.path().join("nowhere"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--init-from")
            && stderr.contains("nowhere")
            && stderr.contains("not a checkpoint folder"),
        "{stderr}"
    );
}

/// A multi-task run on the tiny model: a classification dataset and a
/// tagging one sharing the prompt.
fn tiny_multitask(dir: &Path) -> TrainConfig {
    let classes = dir.join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    let single = tiny_task(&classes, true);
    let tags = dir.join("tags");
    std::fs::create_dir_all(&tags).unwrap();
    let s1: &[(&str, &str)] = &[("a", "B-PER"), ("b", "I-PER"), ("c", "O"), ("d", "B-LOC")];
    let s2: &[(&str, &str)] = &[("d", "B-LOC"), ("c", "O"), ("a", "B-PER")];
    std::fs::write(tags.join("train.txt"), conll(&[s1, s2, s1, s2, s1])).unwrap();
    std::fs::write(tags.join("dev.txt"), conll(&[s2, s1])).unwrap();
    TrainConfig {
        task: String::new(),
        data: PathBuf::new(),
        out: dir.join("run"),
        tasks: vec![
            format!("custom/classification={}", classes.display())
                .parse()
                .unwrap(),
            format!("custom/conll={}", tags.display()).parse().unwrap(),
        ],
        text_fields: vec!["text".into()],
        label_field: Some("label".into()),
        epochs: 3,
        batch_size: 2,
        ..single
    }
}

#[test]
fn a_multitask_run_shares_its_prompt_and_keeps_a_head_per_task() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_multitask(tmp.path());
    let full = train(&config, quiet()).unwrap();
    let slugs = ["custom-classification", "custom-conll"];
    assert_eq!(full["main_metric"], "mean");
    // 6 classification examples and 5 sentences in batches of 2: 3 + 3 steps an epoch.
    assert_eq!(full["global_step"], 18);
    for (k, slug) in slugs.iter().enumerate() {
        // Each task's best/ is an ordinary adapter that reproduces its own
        // best dev metric.
        let task = &full["tasks"][k];
        let adapter = Adapter::load(&config.out.join("best").join(slug), None).unwrap();
        let dev = [
            tmp.path().join("classes/dev.csv"),
            tmp.path().join("tags/dev.txt"),
        ];
        let data = adapter.data_for(&dev[k]).unwrap();
        let metrics = data.evaluate_dev(&adapter.model, 8).unwrap();
        let metric = task["main_metric"].as_str().unwrap();
        assert_eq!(
            Some(metrics[metric]),
            task["best_metric"].as_f64(),
            "{slug}"
        );
        let history = full["history"].as_array().unwrap();
        let best_seen = history
            .iter()
            .map(|h| h["dev"][*slug][metric].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(task["best_metric"].as_f64(), Some(best_seen));
    }
    let mean = |h: &serde_json::Value| h["dev"]["mean"].as_f64().unwrap();
    let h0 = &full["history"][0];
    assert!(
        (mean(h0)
            - (h0["dev"][slugs[0]]["accuracy"].as_f64().unwrap()
                + h0["dev"][slugs[1]]["f1"].as_f64().unwrap())
                / 2.0)
            .abs()
            < 1e-12
    );
    // The run folder itself names the adapters to choose from.
    let err = Adapter::load(&config.out, None).err().unwrap().to_string();
    assert!(
        err.contains("multi-task") && err.contains("best/custom-conll"),
        "{err}"
    );
    // `eval` of the run folder: each task's adapter on its own dev data.
    let eval = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
            .arg("eval")
            .arg("--run")
            .arg(&config.out)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = eval(&["--json"]);
    assert!(ok, "{stderr}");
    let metrics: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for (k, slug) in slugs.iter().enumerate() {
        let task = &full["tasks"][k];
        let metric = task["main_metric"].as_str().unwrap();
        assert_eq!(metrics[slug][metric], task["best_metric"], "{slug}");
    }
    let (ok, _, stderr) = eval(&["--data", "anything"]);
    assert!(!ok && stderr.contains("multi-task run"), "{stderr}");
    // last/ holds every task's state with the one shared prompt.
    let (prompt_a, head_a) = prompt_and_head(&config.out.join("last").join(slugs[0]));
    let (prompt_b, head_b) = prompt_and_head(&config.out.join("last").join(slugs[1]));
    assert_eq!(prompt_a, prompt_b);
    assert_ne!(head_a.len(), head_b.len(), "2 classes against 4 tags");

    // Paused after epoch 1 and resumed: the same run, byte for byte.
    let paused = TrainConfig {
        out: tmp.path().join("paused"),
        ..config.clone()
    };
    let resumed = pause_and_resume(&paused);
    assert_eq!(full["history"], resumed["history"]);
    for slug in slugs {
        for file in ["training_state.safetensors", "trainer_state.json"] {
            let read = |run: &Path| std::fs::read(run.join("last").join(slug).join(file)).unwrap();
            assert_eq!(read(&config.out), read(&paused.out), "{slug}/{file}");
        }
    }

    // The second stage: one task's prompt tuned alone, with its head.
    let alone = TrainConfig {
        tasks: Vec::new(),
        task: "custom/conll".into(),
        data: tmp.path().join("tags"),
        out: tmp.path().join("alone"),
        init_from: Some(config.out.join("best").join(slugs[1])),
        lr: 1e-30,
        epochs: 1,
        ..config.clone()
    };
    train(&alone, quiet()).unwrap();
    assert_eq!(
        prompt_and_head(&alone.out.join("best")),
        prompt_and_head(&config.out.join("best").join(slugs[1]))
    );
}

#[test]
fn multitask_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_multitask(tmp.path());
    for (bad, needle) in [
        (
            TrainConfig {
                task: "custom/conll".into(),
                ..config.clone()
            },
            "not both",
        ),
        (
            TrainConfig {
                tasks: config.tasks[..1].to_vec(),
                ..config.clone()
            },
            "at least two",
        ),
        (
            TrainConfig {
                tasks: vec![config.tasks[1].clone(), config.tasks[1].clone()],
                ..config.clone()
            },
            "twice",
        ),
    ] {
        let err = train(&bad, quiet()).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // One task without a dev split: evaluate all or none.
    std::fs::remove_file(tmp.path().join("tags/dev.txt")).unwrap();
    let err = train(&config, quiet()).unwrap_err().to_string();
    assert!(
        err.contains("custom/conll has no labelled dev split") && err.contains("--dev-from-train"),
        "{err}"
    );
    let held_out = TrainConfig {
        dev_from_train: Some(0.4),
        epochs: 1,
        ..config.clone()
    };
    let summary = train(&held_out, quiet()).unwrap();
    assert!(summary["tasks"][1]["best_metric"].is_number());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args([
            "train",
            "--quiet",
            "--text-fields",
            "text",
            "--label-field",
            "label",
        ])
        .args(["--model", &config.model, "--tasks"])
        .arg(format!(
            "custom/classification={},custom/conll={}",
            tmp.path().join("classes").display(),
            tmp.path().join("nowhere").display()
        ))
        .arg("--out")
        .arg(tmp.path().join("cli"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nowhere"), "{stderr}");
    let toml = tmp.path().join("run.toml");
    std::fs::write(
        &toml,
        "tasks = [{ task = \"ner/conll2003\", data = \"a\" }, { task = \"ner/wnut17\", data = \"b\" }]\n",
    )
    .unwrap();
    let from_toml = TrainConfig::from_toml_file(&toml).unwrap();
    assert_eq!(
        from_toml
            .task_configs()
            .iter()
            .map(|(slug, c)| (slug.as_str(), c.data.clone()))
            .collect::<Vec<_>>(),
        [
            ("ner-conll2003", PathBuf::from("a")),
            ("ner-wnut17", PathBuf::from("b"))
        ]
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args(["train", "--tasks", "custom/conll"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TASK=DATA_DIR"), "{stderr}");
}

#[test]
fn prompt_tuning_trains_resumes_evaluates_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        method: PromptMethod::PromptTuning,
        lr: 3e-2,
        ..tiny_task(tmp.path(), true)
    };
    let full = train(&config, quiet()).unwrap();
    let paused = TrainConfig {
        out: tmp.path().join("paused"),
        ..config.clone()
    };
    let resumed = pause_and_resume(&paused);
    assert_eq!(full["history"], resumed["history"]);
    let read = |run: &Path, file: &str| std::fs::read(run.join(file)).unwrap();
    assert_eq!(
        read(&config.out, "last/training_state.safetensors"),
        read(&paused.out, "last/training_state.safetensors")
    );

    // best/ is a PEFT PROMPT_TUNING adapter of a [P, H] table.
    let best = config.out.join("best");
    let info: serde_json::Value = serde_json::from_slice(&read(&best, "ptuning.json")).unwrap();
    assert_eq!(info["prefix"]["method"], "prompt-tuning");
    assert_eq!(info["prefix"]["layers"], serde_json::json!([]));
    let peft: serde_json::Value =
        serde_json::from_slice(&read(&best, "adapter_config.json")).unwrap();
    assert_eq!(peft["peft_type"], "PROMPT_TUNING");
    let adapter = Adapter::load(&best, None).unwrap();
    assert_eq!(adapter.model.prefix.embedding.shape, vec![4, 32]);
    let data = adapter.data_for(&tmp.path().join("dev.csv")).unwrap();
    let metrics = data.evaluate_dev(&adapter.model, 8).unwrap();
    assert_eq!(metrics["accuracy"], full["best_dev_metrics"]["accuracy"]);

    // The CLI flag.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
            .args(args)
            .output()
            .unwrap()
    };
    let out_dir = tmp.path().join("cli");
    let (data_dir, out_path) = (
        tmp.path().display().to_string(),
        out_dir.display().to_string(),
    );
    let model = config.model.clone();
    let base = [
        "train",
        "--task",
        "custom/classification",
        "--data",
        &data_dir,
        "--model",
        &model,
        "--out",
        &out_path,
        "--prefix-len",
        "4",
        "--epochs",
        "1",
        "--quiet",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let bad = cli(&with(&["--method", "shallow"]));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("prompt-tuning"),
        "{err}"
    );
    let ok = cli(&with(&["--method", "prompt-tuning"]));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_slice(&read(&out_dir, "best/ptuning.json")).unwrap();
    assert_eq!(info["hyperparameters"]["method"], "prompt-tuning");
}

#[test]
fn the_cli_resumes_with_the_stored_length_and_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let cli = |extra: &[&str]| {
        let mut args = tiny_cli_args("train", &config);
        args.extend(["--out".into(), config.out.display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    cli(&["--epochs", "3", "--stop-after-epoch", "1"]);
    // No --epochs: the run's own 3, not the default 10; --lr is not applied.
    let err = cli(&["--resume", "--lr", "0.5"]);
    assert!(err.contains("ignoring --lr (only"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["epochs_completed"], 3);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.out.join("last/ptuning.json")).unwrap())
            .unwrap();
    // Floats are recorded as typed, not widened from f32 (0.009999999776482582).
    assert_eq!(info["hyperparameters"]["lr"].as_f64(), Some(0.01));
}

#[test]
fn a_run_records_absolute_paths_so_eval_works_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let model = config.model.clone();
    // Relative --data and --out, from the temporary folder.
    let train = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .current_dir(tmp.path())
        .args(["train", "--task", "custom/classification", "--data", "."])
        .args(["--out", "run", "--model", &model, "--prefix-len", "4"])
        .args(["--max-seq-len", "32", "--epochs", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("run/best/ptuning.json")).unwrap())
            .unwrap();
    let data = info["hyperparameters"]["data"].as_str().unwrap();
    assert!(Path::new(data).is_absolute(), "{data}");
    // eval from the crate's folder finds the training data by itself.
    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args(["eval", "--json", "--run"])
        .arg(tmp.path().join("run/best"))
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
}

#[test]
fn a_sweep_trains_every_point_and_seed_and_continues_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let out = tmp.path().join("sweep");
    let sweep = |extra: &[&str]| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
            .args(tiny_cli_args("sweep", &config))
            .args(["--epochs", "2", "--batch-size", "4", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (run.status.success(), text(&run.stdout), text(&run.stderr))
    };
    // lr 1e30 diverges: an outcome of its point, not the sweep's end.
    let grid = ["--grid", "lr=1e-2,1e30", "--seeds", "1,2"];
    let (ok, stdout, stderr) = sweep(&grid);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches(": training ").count(), 4, "{stdout}");
    let record = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap()
    };
    let sweep_json = record("sweep.json");
    let runs = sweep_json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let diverged = runs.iter().filter(|r| r["status"] == "diverged").count();
    assert_eq!(diverged, 2, "{sweep_json:#}");
    // Each done run's best metric is its own run folder's.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("lr=1e-2/seed=2/summary.json")).unwrap())
            .unwrap();
    assert_eq!(runs[1]["best_metric"], summary["best_metric"]);
    let a = runs[0]["best_metric"].as_f64().unwrap();
    let b = runs[1]["best_metric"].as_f64().unwrap();
    let best = &sweep_json["results"][0];
    assert_eq!(best["point"], "lr=1e-2");
    assert!((best["mean"].as_f64().unwrap() - (a + b) / 2.0).abs() < 1e-12);
    let table = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        table.contains("| 1e30 | - | - | - | - | 0/2 (2 diverged) |"),
        "{table}"
    );
    assert!(stdout.contains(&table), "{stdout}");

    // The same command again trains nothing; a third seed trains one run a point.
    let (ok, stdout, stderr) = sweep(&grid);
    assert!(ok && !stdout.contains(": training "), "{stdout}{stderr}");
    assert_eq!(stdout.matches("(recorded)").count(), 4, "{stdout}");
    let (ok, stdout, stderr) = sweep(&["--grid", "lr=1e-2,1e30", "--seeds", "1,2,3"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches(": training ").count(), 2, "{stdout}");
    assert_eq!(record("sweep.json")["results"][0]["runs"], 3);

    // A run interrupted after its first epoch (last/ but no summary) resumes.
    let run = out.join("lr=1e-2/seed=1");
    let finished = std::fs::read(run.join("summary.json")).unwrap();
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let (ok, stdout, stderr) = sweep(&grid);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches(": resuming ").count(), 1, "{stdout}");
    let resumed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_slice(&finished).unwrap();
    assert_eq!(resumed["best_metric"], before["best_metric"]);

    // Other shared settings would mix runs that do not compare.
    let (ok, _, stderr) = sweep(&["--grid", "lr=1e-2", "--dropout", "0.2"]);
    assert!(!ok && stderr.contains("dropout (recorded 0.1"), "{stderr}");
    let (ok, _, stderr) = sweep(&["--grid", "learning-rate=1"]);
    assert!(
        !ok && stderr.contains("--grid learning_rate: no such setting"),
        "{stderr}"
    );
}

#[test]
fn a_file_without_the_label_column_is_named_with_the_column() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let (ok, err) = tiny_train(&config, &tmp.path().join("a"), &["--label-field", "lbl"]);
    assert!(
        !ok && err.contains("train.csv: the training file has no labels")
            && err.contains("no column or key \"lbl\""),
        "{err}"
    );
    // A dev file without labels trains without evaluation, and says why.
    std::fs::write(tmp.path().join("dev.csv"), "text,lab\n\"a b\",pos\n").unwrap();
    let (ok, err) = tiny_train(&config, &tmp.path().join("b"), &[]);
    assert!(
        ok && err.contains("dev.csv has no labels (no column or key \"label\""),
        "{err}"
    );
}

#[test]
fn column_indices_on_a_file_with_a_header_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), false);
    let indices = ["--text-fields", "0", "--label-field", "1"];
    let (ok, err) = tiny_train(&config, &config.out, &indices);
    assert!(
        ok && err.contains("line 1's label \"label\" is on no other line"),
        "{err}"
    );
}

#[test]
fn zero_counts_are_refused_by_the_cli() {
    for args in [
        &["eval", "--run", "x", "--batch-size", "0"][..],
        &["predict", "--run", "x", "--input", "y", "--batch-size", "0"],
        &["--threads", "0", "eval", "--run", "x"],
    ] {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && err.contains("'0'") && err.contains("must be at least 1"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_one_class_training_file_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), false);
    std::fs::write(
        tmp.path().join("train.csv"),
        "text,label\na b,pos\nc d,pos\n",
    )
    .unwrap();
    let (ok, err) = tiny_train(&config, &config.out, &[]);
    assert!(
        ok && err.contains("every training example has the same label"),
        "{err}"
    );
}

#[test]
fn a_sweep_keeps_to_a_folder_of_its_own_and_needs_a_dev_split() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let sweep = |config: &TrainConfig, out: &Path| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
            .args(tiny_cli_args("sweep", config))
            .args(["--epochs", "1", "--grid", "lr=1e-2,2e-2", "--out"])
            .arg(out)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (run.status.success(), text(&run.stdout), text(&run.stderr))
    };
    // A run's folder is refused, and left as it was.
    let (ok, _) = tiny_train(&config, &config.out, &[]);
    assert!(ok);
    let (ok, _, err) = sweep(&config, &config.out);
    assert!(
        !ok && err.contains("already holds files and no sweep.json"),
        "{err}"
    );
    assert!(!config.out.join("sweep.json").exists());
    // A sweep's folder is refused by train.
    let swept = tmp.path().join("swept");
    let (ok, _, err) = sweep(&config, &swept);
    assert!(ok, "{err}");
    let (ok, err) = tiny_train(&config, &swept, &[]);
    assert!(!ok && err.contains("holds a sweep"), "{err}");
    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"))
        .args(["eval", "--run"])
        .arg(&swept)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&eval.stderr);
    assert!(
        err.contains("is a sweep's folder: pass one of its runs"),
        "{err}"
    );

    // Without a dev split there is nothing to compare: refused before any
    // run trains, and before the sweep's folder is made, so that the same
    // --out takes the sweep with --dev-from-train.
    let bare = tempfile::tempdir().unwrap();
    let no_dev = tiny_task(bare.path(), false);
    let (ok, out, err) = sweep(&no_dev, &bare.path().join("sweep"));
    assert!(
        !ok && err.contains("has no dev split") && err.contains("--dev-from-train"),
        "{err}"
    );
    assert!(!out.contains(": training "), "{out}");
    assert!(!bare.path().join("sweep").exists());
}

/// Ctrl-C in a sweep's run: exit 130, and the same command continues.
#[cfg(unix)]
#[test]
fn an_interrupted_sweep_continues_with_the_same_command() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let out = tmp.path().join("sweep");
    let command = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"));
        c.args(tiny_cli_args("sweep", &config))
            .args(["--epochs", "300", "--grid", "lr=1e-2", "--out"])
            .arg(&out);
        c
    };
    let err = interrupt_after_an_epoch(command(), &out.join("lr=1e-2/seed=42"));
    assert!(err.contains("the same sweep command continues it"), "{err}");
    assert!(!err.contains("--resume"), "sweep has no --resume: {err}");
    let again = command().output().unwrap();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(text.contains(": resuming "), "{text}");
}

#[test]
fn prompt_tuning_starts_from_a_text_and_exports_it_for_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let text = ["--method", "prompt-tuning", "--prompt-init", "text:a b c"];
    let (ok, err) = tiny_train(&config, &config.out, &text);
    assert!(ok, "{err}");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.out.join("best/ptuning.json")).unwrap())
            .unwrap();
    assert_eq!(info["hyperparameters"]["prompt_init"], "text:a b c");
    let peft = tmp.path().join("peft");
    ptuning::training::peft::export_peft(&config.out, &peft).unwrap();
    let adapter: serde_json::Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["prompt_tuning_init"], "TEXT");
    assert_eq!(adapter["prompt_tuning_init_text"], "a b c");
    assert_eq!(adapter["tokenizer_name_or_path"], config.model.as_str());
    // Imported and exported again, the adapter still says how it started.
    let imported = tmp.path().join("imported");
    let options = ptuning::training::peft::ImportOptions {
        labels: Some(vec!["neg".into(), "pos".into()]),
        ..Default::default()
    };
    ptuning::training::peft::import_peft(&peft, &imported, &options).unwrap();
    let again = tmp.path().join("again");
    ptuning::training::peft::export_peft(&imported, &again).unwrap();
    let second: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(second["prompt_tuning_init"], "TEXT");
    assert_eq!(second["prompt_tuning_init_text"], "a b c");

    // A deep prompt's keys and values do not start from text; nor does a
    // prompt that --init-from already starts.
    for (extra, needle) in [
        (
            &["--prompt-init", "random"][..],
            "P-Tuning v2's keys and values",
        ),
        (
            &[
                "--method",
                "prompt-tuning",
                "--prompt-init",
                "random",
                "--init-from",
                "x",
            ],
            "both set where the prompt starts",
        ),
    ] {
        let (ok, err) = tiny_train(&config, &tmp.path().join("no"), extra);
        assert!(!ok && err.contains(needle), "{err}");
    }
}

/// Starts `command`, sends it SIGINT once `run_dir` holds a checkpoint,
/// and checks that it exits with status 130: its standard error.
#[cfg(unix)]
fn interrupt_after_an_epoch(mut command: std::process::Command, run_dir: &Path) -> String {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !run_dir.join("last").exists() {
        assert!(started.elapsed().as_secs() < 120, "no epoch ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopped = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert_eq!(stopped.status.code(), Some(130), "{err}");
    err
}

/// Ctrl-C stops a run at its next step and says how to go on (exit 130).
#[cfg(unix)]
#[test]
fn an_interrupted_run_says_how_to_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_task(tmp.path(), true);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ptuning"));
    command
        .args(tiny_cli_args("train", &config))
        .args(["--epochs", "100000", "--out"])
        .arg(&config.out);
    let err = interrupt_after_an_epoch(command, &config.out);
    assert!(
        err.contains("stopping after this step")
            && err.contains("interrupted at epoch")
            && err.contains("continue with --resume"),
        "{err}"
    );
}

#[test]
fn a_multitask_sweep_records_each_task_s_metric() {
    use ptuning::training::sweep::{sweep, SweepOptions, SweepPlan};
    let tmp = tempfile::tempdir().unwrap();
    // One task on two datasets: a metric each, by folder name.
    let other = tmp.path().join("classes2");
    std::fs::create_dir_all(&other).unwrap();
    tiny_task(&other, true);
    let mut base = TrainConfig {
        out: tmp.path().join("sweep"),
        epochs: 1,
        ..tiny_multitask(tmp.path())
    };
    base.tasks.push(
        format!("custom/classification={}", other.display())
            .parse()
            .unwrap(),
    );
    let plan = SweepPlan {
        base,
        grid: vec!["lr=1e-2".parse().unwrap()],
        seeds: vec![1],
    };
    let options = SweepOptions {
        quiet_runs: true,
        ..SweepOptions::default()
    };
    let report = sweep(&plan, options).unwrap();
    assert!(
        report
            .table
            .starts_with("| lr | tasks' mean dev metric, mean |"),
        "{}",
        report.table
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("sweep/sweep.json")).unwrap())
            .unwrap();
    let run = &record["runs"][0];
    let tasks = run["task_metrics"].as_object().unwrap();
    assert_eq!(tasks.len(), 3, "{run}");
    // One epoch: each task's best epoch is the run's.
    let mean = tasks.values().map(|v| v.as_f64().unwrap()).sum::<f64>() / 3.0;
    assert!(
        (run["best_metric"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{run}"
    );
}
