//! Tasks against the real benchmark files in the shared data folder
//! (`$PTUNING_DATA`, default `../shared/data` beside the crate): counts and
//! label distributions as verified in each folder's SOURCE.md, one formatted
//! example per task checked against the official P-Tuning v2 templates
//! (THUDM/P-tuning-v2 `tasks/superglue/dataset.py`, `tasks/glue/dataset.py`),
//! metrics on real splits, and the format-only GLUE tasks and every error
//! case on small files in a temp dir.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ptuning::tasks::{
    known_tasks, task_by_name, task_dir, Example, Label, Prediction, Split, Task, TaskKind,
    TaskOptions,
};

fn data_root() -> PathBuf {
    let root = match std::env::var_os("PTUNING_DATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    };
    assert!(
        root.join("superglue").is_dir() && root.join("glue").is_dir(),
        "benchmark data not found at {} (set PTUNING_DATA)",
        root.display()
    );
    root
}

fn task(name: &str) -> Box<dyn Task> {
    task_by_name(name, &TaskOptions::default()).unwrap()
}

/// Reads `split` of a built-in task from the real data.
fn read(name: &str, split: Split) -> Vec<Example> {
    let t = task(name);
    let dir = task_dir(&data_root(), name).unwrap();
    t.read_split(&dir, split)
        .unwrap_or_else(|e| panic!("{name} {split}: {e}"))
}

/// Label name → count.
fn distribution(t: &dyn Task, examples: &[Example]) -> BTreeMap<String, usize> {
    let names = t.label_names();
    let mut counts = BTreeMap::new();
    for e in examples {
        match e.label {
            Some(Label::Class(c)) => *counts.entry(names[c].clone()).or_insert(0) += 1,
            other => panic!("{}: unexpected label {other:?}", e.guid),
        }
    }
    counts
}

fn dist(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Checks the count, and the label distribution (`None`: unlabeled split).
fn check_split(name: &str, split: Split, count: usize, labels: Option<&[(&str, usize)]>) {
    let t = task(name);
    let examples = read(name, split);
    assert_eq!(examples.len(), count, "{name} {split}: example count");
    let want_inputs = match t.kind() {
        TaskKind::MultipleChoice { choices } => choices,
        _ => 1,
    };
    for e in &examples {
        assert_eq!(e.inputs.len(), want_inputs, "{name} {}", e.guid);
    }
    match labels {
        Some(want) => assert_eq!(distribution(&*t, &examples), dist(want), "{name} {split}"),
        None => assert!(
            examples.iter().all(|e| e.label.is_none()),
            "{name} {split} should be unlabeled"
        ),
    }
    let guids: BTreeSet<&str> = examples.iter().map(|e| e.guid.as_str()).collect();
    assert_eq!(guids.len(), examples.len(), "{name} {split}: guids unique");
}

fn tmp_file(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn err_of(t: &dyn Task, path: &Path) -> String {
    match t.read(path) {
        Ok(v) => panic!(
            "expected an error for {}, read {} examples",
            path.display(),
            v.len()
        ),
        Err(e) => e.to_string(),
    }
}

/// Asserts that a message contains every fragment.
fn assert_has(msg: &str, fragments: &[&str]) {
    for f in fragments {
        assert!(msg.contains(f), "{f:?} not in: {msg}");
    }
}

fn single(e: &Example) -> (&str, Option<&str>) {
    assert_eq!(e.inputs.len(), 1, "{}", e.guid);
    (e.inputs[0].0.as_str(), e.inputs[0].1.as_deref())
}

// ---------------------------------------------------------------------------
// Counts (SOURCE.md "Verified counts")

#[test]
fn superglue_counts_and_labels() {
    let tf = |f: usize, t: usize| [("False", f), ("True", t)];
    check_split("superglue/boolq", Split::Dev, 3270, Some(&tf(1237, 2033)));
    check_split("superglue/boolq", Split::Test, 3245, None);
    let cb = |e, c, n| [("entailment", e), ("contradiction", c), ("neutral", n)];
    check_split("superglue/cb", Split::Train, 250, Some(&cb(115, 119, 16)));
    check_split("superglue/cb", Split::Dev, 56, Some(&cb(23, 28, 5)));
    check_split("superglue/cb", Split::Test, 250, None);
    let copa = |a, b| [("0", a), ("1", b)];
    check_split("superglue/copa", Split::Train, 400, Some(&copa(195, 205)));
    check_split("superglue/copa", Split::Dev, 100, Some(&copa(55, 45)));
    check_split("superglue/copa", Split::Test, 500, None);
    let rte = |e, n| [("entailment", e), ("not_entailment", n)];
    check_split("superglue/rte", Split::Train, 2490, Some(&rte(1249, 1241)));
    check_split("superglue/rte", Split::Dev, 277, Some(&rte(146, 131)));
    check_split("superglue/rte", Split::Test, 3000, None);
    check_split("superglue/wic", Split::Train, 5428, Some(&tf(2714, 2714)));
    check_split("superglue/wic", Split::Test, 1400, None);
    check_split("superglue/wsc", Split::Train, 554, Some(&tf(295, 259)));
    check_split("superglue/wsc", Split::Dev, 104, Some(&tf(66, 38)));
    check_split("superglue/wsc", Split::Test, 146, None);
    // MultiRC: one example per answer option.
    check_split(
        "superglue/multirc",
        Split::Train,
        27243,
        Some(&tf(15218, 12025)),
    );
    check_split("superglue/multirc", Split::Dev, 4848, Some(&tf(2773, 2075)));
    check_split("superglue/multirc", Split::Test, 9693, None);
}

#[test]
fn multirc_groups_are_questions() {
    for (split, questions) in [(Split::Train, 5131), (Split::Dev, 953)] {
        let ex = read("superglue/multirc", split);
        let groups: BTreeSet<&str> = ex.iter().map(|e| e.group.as_deref().unwrap()).collect();
        assert_eq!(groups.len(), questions, "{split}");
    }
}

#[test]
fn glue_counts_and_labels() {
    let cola = |a, u| [("acceptable", a), ("unacceptable", u)];
    check_split("glue/cola", Split::Train, 8551, Some(&cola(6023, 2528)));
    check_split("glue/cola", Split::Dev, 1043, Some(&cola(721, 322)));
    check_split("glue/cola", Split::Test, 1063, None);
    let sst = |p, n| [("positive", p), ("negative", n)];
    check_split("glue/sst2", Split::Train, 67349, Some(&sst(37569, 29780)));
    check_split("glue/sst2", Split::Dev, 872, Some(&sst(444, 428)));
    check_split("glue/sst2", Split::Test, 1821, None);
    let mrpc = |p, n| [("equivalent", p), ("not_equivalent", n)];
    check_split("glue/mrpc", Split::Train, 3668, Some(&mrpc(2474, 1194)));
    check_split("glue/mrpc", Split::Dev, 408, Some(&mrpc(279, 129)));
    check_split("glue/mrpc", Split::Test, 1725, None);
    let rte = |e, n| [("entailment", e), ("not_entailment", n)];
    check_split("glue/rte", Split::Train, 2490, Some(&rte(1249, 1241)));
    check_split("glue/rte", Split::Dev, 277, Some(&rte(146, 131)));
    check_split("glue/rte", Split::Test, 3000, None);
}

#[test]
fn glue_rte_matches_superglue_rte_labels() {
    // SOURCE.md: same examples, same order, same labels in both releases.
    for split in [Split::Train, Split::Dev] {
        let g = read("glue/rte", split);
        let s = read("superglue/rte", split);
        assert_eq!(g.len(), s.len());
        assert!(g.iter().zip(&s).all(|(a, b)| a.label == b.label), "{split}");
    }
}

#[test]
fn absent_splits_name_the_missing_file() {
    // BoolQ has no train here, WiC no val.
    for (name, split, file) in [
        ("superglue/boolq", Split::Train, "train.jsonl"),
        ("superglue/wic", Split::Dev, "val.jsonl"),
    ] {
        let t = task(name);
        let path = t.split_path(&task_dir(&data_root(), name).unwrap(), split);
        assert!(path.ends_with(file));
        assert_has(&err_of(&*t, &path), &[file]);
    }
}

// ---------------------------------------------------------------------------
// Formatting: first example of each task against the official templates.

#[test]
fn boolq_question_then_passage() {
    // task_to_keys["boolq"] = ("question", "passage").
    let e = &read("superglue/boolq", Split::Dev)[0];
    let (text, pair) = single(e);
    assert_eq!(text, "does ethanol take more energy make that produces");
    let pair = pair.unwrap();
    assert!(pair.starts_with(
        "Ethanol fuel -- All biomass goes through at least some of these steps: it needs "
    ));
    assert_eq!(pair.len(), 1384);
    assert_eq!(e.label, Some(Label::Class(0))); // false → "False" = 0
    assert_eq!(e.guid, "val-0");
}

#[test]
fn cb_and_rte_premise_then_hypothesis() {
    // task_to_keys["cb"] = task_to_keys["rte"] = ("premise", "hypothesis").
    let e = &read("superglue/cb", Split::Dev)[0];
    assert_eq!(
        single(e),
        (
            "Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion of titanic anatomy to shaft? Did he think he was helping?",
            Some("Valence was helping")
        )
    );
    assert_eq!(e.label, Some(Label::Class(1))); // contradiction
    let t = task("superglue/cb");
    assert_eq!(t.label_names(), ["entailment", "contradiction", "neutral"]);
    assert_eq!(t.kind(), TaskKind::Classification);

    let e = &read("superglue/rte", Split::Dev)[0];
    assert_eq!(
        single(e),
        (
            "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to the Christopher Reeve Foundation.",
            Some("Christopher Reeve had an accident.")
        )
    );
    assert_eq!(e.label, Some(Label::Class(1))); // not_entailment
}

/// SuperGLUE's diagnostics, read by RTE's reader (an RTE adapter scores
/// them) and scored as the leaderboard scores them. Golden values: sklearn's
/// accuracy_score and matthews_corrcoef on the same predictions,
/// `1 if (i * 7) % 5 < 2 else 0` for the i-th line.
#[test]
fn rte_scores_the_diagnostics_axb_and_axg() {
    let t = task("superglue/rte");
    let predict = |n: usize| -> Vec<Prediction> {
        (0..n)
            .map(|i| Prediction::Class(usize::from((i * 7) % 5 < 2)))
            .collect()
    };
    let close = |m: &BTreeMap<String, f64>, key: &str, want: f64| {
        assert!((m[key] - want).abs() < 1e-12, "{key}: {m:?}");
    };

    let axb = t
        .read(&data_root().join("superglue/AX-b/AX-b.jsonl"))
        .unwrap();
    assert_eq!(axb.len(), 1104);
    assert_eq!(
        distribution(&*t, &axb),
        dist(&[("entailment", 460), ("not_entailment", 644)])
    );
    assert_eq!(
        single(&axb[0]),
        (
            "The cat sat on the mat.",
            Some("The cat did not sit on the mat.")
        )
    );
    assert_eq!(
        (axb[0].guid.as_str(), &axb[0].categories[..]),
        ("AX-b-0", &["logic".to_string()][..])
    );
    let m = t.metrics(&axb, &predict(axb.len())).unwrap();
    close(&m, "accuracy", 0.4945652173913043);
    close(&m, "mcc", 0.023123712876023515);
    close(&m, "mcc_lexical_semantics", 0.013328722397692129);
    close(&m, "mcc_predicate_argument_structure", 0.022022597485241567);
    close(&m, "mcc_logic", 0.02800818275906198);
    close(&m, "mcc_knowledge", 0.03671888931879482);
    assert!(!m.contains_key("gender_parity"), "{m:?}");

    let axg = t
        .read(&data_root().join("superglue/AX-g/AX-g.jsonl"))
        .unwrap();
    assert_eq!(axg.len(), 356);
    let m = t.metrics(&axg, &predict(axg.len())).unwrap();
    close(&m, "accuracy", 0.49719101123595505);
    close(&m, "gender_parity", 35.0 / 178.0);
    assert!(!m.contains_key("mcc"), "{m:?}");
    let gold: Vec<Prediction> = axg
        .iter()
        .map(|e| match e.label {
            Some(Label::Class(c)) => Prediction::Class(c),
            _ => unreachable!(),
        })
        .collect();
    close(&t.metrics(&axg, &gold).unwrap(), "gender_parity", 1.0);
    // RTE's own dev split stays accuracy only.
    let dev = read("superglue/rte", Split::Dev);
    let m = t.metrics(&dev, &predict(dev.len())).unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["accuracy"]);

    // Gender parity needs the pairs in order; predictions do not, so the
    // pairs are checked where the parity is scored, naming the lines' ids.
    let dir = tempfile::tempdir().unwrap();
    let line = |idx: usize, p: &str, h: &str| {
        format!("{{\"premise\": \"{p}\", \"hypothesis\": \"{h}\", \"label\": \"entailment\", \"idx\": {idx}, \"pair_id\": 1}}\n")
    };
    let score = |name: &str, lines: &[String]| {
        let path = tmp_file(&dir, name, &lines.concat());
        let examples = t.read(&path).unwrap();
        let predictions = vec![Prediction::Class(0); examples.len()];
        t.metrics(&examples, &predictions)
            .map_err(|e| e.to_string())
    };
    let good = [line(0, "his", "a"), line(1, "her", "a")];
    assert_eq!(score("good.jsonl", &good).unwrap()["gender_parity"], 1.0);
    for (lines, needle) in [
        (
            vec![line(0, "his", "a"), line(1, "her", "b")],
            "shuffled-0 and shuffled-1: the hypotheses or labels differ",
        ),
        (
            vec![line(0, "his", "a"), line(1, "his", "a")],
            "shuffled-0 and shuffled-1: the premises are the same",
        ),
        (
            vec![
                line(0, "his", "a"),
                line(1, "her", "a"),
                line(2, "his", "b"),
            ],
            "shuffled-2: has no partner",
        ),
    ] {
        let err = score("shuffled.jsonl", &lines).unwrap_err();
        assert_has(&err, &[needle]);
    }

    // Another SuperGLUE task's adapter is told what the diagnostics need.
    let cb = task("superglue/cb");
    for (file, name) in [("AX-b/AX-b.jsonl", "AX-b"), ("AX-g/AX-g.jsonl", "AX-g")] {
        let err = err_of(&*cb, &data_root().join("superglue").join(file));
        assert_has(
            &err,
            &[
                "line 1",
                &format!("SuperGLUE's {name} diagnostic"),
                "superglue/rte",
            ],
        );
    }
}

#[test]
fn copa_because_or_so_with_each_choice() {
    // dataset.py: text_a = f"{premise} {'because' if question == 'cause' else 'so'}",
    // tokenized with choice1 and with choice2.
    let ex = read("superglue/copa", Split::Dev);
    let e = &ex[0]; // question "effect"
    assert_eq!(
        e.inputs,
        vec![
            (
                "The man turned on the faucet. so".to_string(),
                Some("The toilet filled with water.".to_string())
            ),
            (
                "The man turned on the faucet. so".to_string(),
                Some("Water flowed from the spout.".to_string())
            ),
        ]
    );
    assert_eq!(e.label, Some(Label::Class(1)));
    let e = &ex[4]; // question "cause"
    assert_eq!(
        e.inputs,
        vec![
            (
                "The hamburger meat browned. because".to_string(),
                Some("The cook froze it.".to_string())
            ),
            (
                "The hamburger meat browned. because".to_string(),
                Some("The cook grilled it.".to_string())
            ),
        ]
    );
    let t = task("superglue/copa");
    assert_eq!(t.kind(), TaskKind::MultipleChoice { choices: 2 });
    assert_eq!(t.label_names(), ["0", "1"]);
}

#[test]
fn wic_template() {
    // dataset.py template_id 0: f"{sentence1} {sentence2} Does {word} have the
    // same meaning in both sentences?", no pair.
    let e = &read("superglue/wic", Split::Train)[0];
    assert_eq!(
        single(e),
        (
            "Do you want to come over to my place later? A political system with no place for the less prominent groups. Does place have the same meaning in both sentences?",
            None
        )
    );
    assert_eq!(e.label, Some(Label::Class(0)));
}

#[test]
fn wsc_template() {
    // dataset.py template_id 0: f"{span2_text}: {text}", paired with span1_text.
    let e = &read("superglue/wsc", Split::Dev)[0];
    assert_eq!(
        single(e),
        (
            "him: Bernard , who had not told the government official that he was less than 21 when he filed for a homestead claim, did not consider that he had done anything dishonest. Still, anyone who knew that he was 19 years old could take his claim away from him .",
            Some("anyone")
        )
    );
    assert_eq!(e.label, Some(Label::Class(0)));
}

#[test]
fn multirc_paragraph_and_question_answer() {
    // task_to_keys["multirc"] = ("paragraph", "question_answer"),
    // question_answer = f"{question} {answer}".
    let ex = read("superglue/multirc", Split::Dev);
    let e = &ex[0];
    let (text, pair) = single(e);
    assert!(text.starts_with(
        "What causes a change in motion? The application of a force. Any time an object changes motion, a for"
    ));
    assert_eq!(text.len(), 841);
    assert_eq!(
        pair,
        Some(
            "Would the mass of a baseball affect how much force you have to use to pick it up? No"
        )
    );
    assert_eq!(e.label, Some(Label::Class(0)));
    assert_eq!(e.guid, "val-0-0-0");
    assert_eq!(e.group.as_deref(), Some("0-0"));
    // The same paragraph for every answer of the passage.
    assert_eq!(ex[1].inputs[0].0, text);
    assert_eq!(
        ex[1].inputs[0].1.as_deref(),
        Some(
            "Would the mass of a baseball affect how much force you have to use to pick it up? Yes"
        )
    );
}

#[test]
fn glue_real_formats() {
    // CoLA train/dev: headerless, sentence = 4th column.
    let e = &read("glue/cola", Split::Train)[0];
    assert_eq!(
        single(e),
        (
            "Our friends won't buy this analysis, let alone the next one we propose.",
            None
        )
    );
    assert_eq!(e.label, Some(Label::Class(1)));
    assert_eq!(e.guid, "train-0");
    let e = &read("glue/cola", Split::Dev)[0];
    assert_eq!(
        single(e),
        ("The sailors rode the breeze clear of the rocks.", None)
    );
    let e = &read("glue/cola", Split::Test)[0];
    assert_eq!(single(e), ("Bill whistled past the house.", None));
    // SST-2: text kept verbatim (trailing space).
    let e = &read("glue/sst2", Split::Dev)[0];
    assert_eq!(
        single(e),
        ("it 's a charming and often affecting journey . ", None)
    );
    assert_eq!(e.label, Some(Label::Class(1)));
    // MRPC: BOM header; quotes are ordinary characters.
    let e = &read("glue/mrpc", Split::Dev)[0];
    assert_eq!(
        single(e),
        (
            "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .",
            Some("\" The foodservice pie business does not fit our long-term growth strategy .")
        )
    );
    assert_eq!(e.label, Some(Label::Class(1)));
    let e = &read("glue/mrpc", Split::Train)[0];
    assert_eq!(
        single(e),
        (
            "Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .",
            Some("Referring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence .")
        )
    );
    let e = &read("glue/rte", Split::Train)[0];
    assert_eq!(
        single(e),
        (
            "No Weapons of Mass Destruction Found in Iraq Yet.",
            Some("Weapons of Mass Destruction Found in Iraq.")
        )
    );
    assert_eq!(e.label, Some(Label::Class(1)));
}

// ---------------------------------------------------------------------------
// Metrics on real splits.

#[test]
fn metrics_on_real_dev_splits() {
    let gold = |ex: &[Example]| -> Vec<Prediction> {
        ex.iter()
            .map(|e| match e.label {
                Some(Label::Class(c)) => Prediction::Class(c),
                Some(Label::Score(s)) => Prediction::Score(s),
                None => panic!("unlabeled"),
            })
            .collect()
    };
    for name in known_tasks() {
        if name.starts_with("custom/")
            || ["glue/qnli", "glue/qqp", "glue/mnli", "glue/stsb"].contains(name)
        {
            continue;
        }
        let t = task(name);
        // WiC has no val here: score its train split instead.
        let split = if *name == "superglue/wic" {
            Split::Train
        } else {
            Split::Dev
        };
        let ex = read(name, split);
        let m = t.metrics(&ex, &gold(&ex)).unwrap();
        assert_eq!(m[t.main_metric()], 1.0, "{name}: perfect predictions");
    }

    // CB, always "contradiction": accuracy 28/56; macro-F1 over the three
    // classes = (0 + 56/84 + 0)/3 (sklearn f1_score(average="macro") = 0.2222…).
    let t = task("superglue/cb");
    let ex = read("superglue/cb", Split::Dev);
    let m = t
        .metrics(&ex, &vec![Prediction::Class(1); ex.len()])
        .unwrap();
    assert_eq!(m["accuracy"], 0.5);
    assert!((m["f1"] - 0.2222222222222222).abs() < 1e-12, "{m:?}");

    // MultiRC, every answer predicted correct: sklearn f1_score = 0.5994511050122779,
    // EM (all answers of a question right) = 8/953 = 0.008394543546694649.
    let t = task("superglue/multirc");
    assert_eq!(t.main_metric(), "f1a");
    let ex = read("superglue/multirc", Split::Dev);
    let m = t
        .metrics(&ex, &vec![Prediction::Class(1); ex.len()])
        .unwrap();
    assert!((m["f1a"] - 0.5994511050122779).abs() < 1e-12, "{m:?}");
    assert!((m["em"] - 8.0 / 953.0).abs() < 1e-12, "{m:?}");
    assert!((m["accuracy"] - 2075.0 / 4848.0).abs() < 1e-12, "{m:?}");

    // CoLA: constant predictions must not crash, MCC 0; alternating 0/1
    // predictions: sklearn matthews_corrcoef = 0.007660922210115666.
    let t = task("glue/cola");
    assert_eq!(t.main_metric(), "mcc");
    let ex = read("glue/cola", Split::Dev);
    for c in [0, 1] {
        let m = t
            .metrics(&ex, &vec![Prediction::Class(c); ex.len()])
            .unwrap();
        assert_eq!(m["mcc"], 0.0);
    }
    let alt: Vec<Prediction> = (0..ex.len()).map(|i| Prediction::Class(i % 2)).collect();
    let m = t.metrics(&ex, &alt).unwrap();
    assert!((m["mcc"] - 0.007660922210115666).abs() < 1e-12, "{m:?}");

    // MRPC, always "equivalent": accuracy 279/408, F1 = sklearn 0.8122270742358079.
    let t = task("glue/mrpc");
    assert_eq!(t.main_metric(), "accuracy");
    let ex = read("glue/mrpc", Split::Dev);
    let m = t
        .metrics(&ex, &vec![Prediction::Class(1); ex.len()])
        .unwrap();
    assert!((m["accuracy"] - 279.0 / 408.0).abs() < 1e-12);
    assert!((m["f1"] - 0.8122270742358079).abs() < 1e-12, "{m:?}");
}

#[test]
fn metrics_refuse_unlabeled_and_mismatched() {
    let t = task("superglue/cb");
    let test = read("superglue/cb", Split::Test);
    let err = t
        .metrics(&test, &vec![Prediction::Class(0); test.len()])
        .unwrap_err()
        .to_string();
    assert_has(&err, &["no gold label"]);
    let dev = read("superglue/cb", Split::Dev);
    let err = t.metrics(&dev, &[]).unwrap_err().to_string();
    assert_has(&err, &["0 predictions for 56 examples"]);
}

// ---------------------------------------------------------------------------
// Format-only GLUE tasks (data not in shared/): small hand-made files laid
// out like the GLUE release.

#[test]
fn qnli_format() {
    let dir = tempfile::tempdir().unwrap();
    tmp_file(
        &dir,
        "dev.tsv",
        "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution was herald?\tAs of that day, the new constitution heralding the Second Republic came into force.\tentailment\n1\tWhy?\t\"Because\" it is.\tnot_entailment\n",
    );
    tmp_file(&dir, "test.tsv", "index\tquestion\tsentence\n0\tq?\ts.\n");
    let t = task("glue/qnli");
    let ex = t.read_split(dir.path(), Split::Dev).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        single(&ex[0]),
        (
            "What came into force after the new constitution was herald?",
            Some("As of that day, the new constitution heralding the Second Republic came into force.")
        )
    );
    assert_eq!(single(&ex[1]), ("Why?", Some("\"Because\" it is.")));
    assert_eq!(ex[0].label, Some(Label::Class(0)));
    assert_eq!(ex[1].label, Some(Label::Class(1)));
    let test = t.read_split(dir.path(), Split::Test).unwrap();
    assert_eq!(test[0].label, None);
}

#[test]
fn qqp_format() {
    let dir = tempfile::tempdir().unwrap();
    tmp_file(
        &dir,
        "train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n5\t11\t12\tHow do I read?\tHow can I read?\t1\n",
    );
    tmp_file(&dir, "test.tsv", "id\tquestion1\tquestion2\n0\tA?\tB?\n");
    let t = task("glue/qqp");
    assert_eq!(t.label_names(), ["not_duplicate", "duplicate"]);
    let ex = t.read_split(dir.path(), Split::Train).unwrap();
    assert_eq!(
        single(&ex[0]),
        (
            "How is the life of a math student?",
            Some("Which level of prepration is enough?")
        )
    );
    assert_eq!(ex[1].label, Some(Label::Class(1)));
    let test = t.read_split(dir.path(), Split::Test).unwrap();
    assert_eq!(single(&test[0]), ("A?", Some("B?")));
    assert_eq!(test[0].label, None);
    let m = t
        .metrics(&ex, &[Prediction::Class(1), Prediction::Class(1)])
        .unwrap();
    assert_eq!(m["accuracy"], 0.5);
    assert!((m["f1"] - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn mnli_format_and_splits() {
    let dir = tempfile::tempdir().unwrap();
    // dev_matched: 16 columns (label1..label5, gold_label); train: 12; test: 10.
    let dev_header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n";
    let dev_row = |s1: &str, s2: &str, gold: &str| {
        format!("0\t1\t2\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t{s1}\t{s2}\t{gold}\t{gold}\t{gold}\t{gold}\t{gold}\t{gold}\n")
    };
    tmp_file(
        &dir,
        "dev_matched.tsv",
        &format!(
            "{dev_header}{}{}",
            dev_row(
                "The new rights are nice enough",
                "Everyone really likes the newest benefits ",
                "neutral"
            ),
            dev_row("A man.", "A person.", "entailment")
        ),
    );
    tmp_file(
        &dir,
        "dev_mismatched.tsv",
        &format!("{dev_header}{}", dev_row("x", "y", "contradiction")),
    );
    tmp_file(
        &dir,
        "train.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n0\t1\t2\tgov\ta\tb\ta\tb\tP.\tH.\tneutral\tneutral\n",
    );
    tmp_file(
        &dir,
        "test_matched.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\n0\t1\t2\tgov\ta\tb\ta\tb\tP.\tH.\n",
    );
    let t = task("glue/mnli");
    assert_eq!(t.label_names(), ["entailment", "neutral", "contradiction"]);
    assert!(t
        .split_path(dir.path(), Split::Dev)
        .ends_with("dev_matched.tsv"));
    assert!(t
        .split_path(dir.path(), Split::Test)
        .ends_with("test_matched.tsv"));
    let dev = t.read_split(dir.path(), Split::Dev).unwrap();
    assert_eq!(
        single(&dev[0]),
        (
            "The new rights are nice enough",
            Some("Everyone really likes the newest benefits ")
        )
    );
    assert_eq!(dev[0].label, Some(Label::Class(1)));
    assert_eq!(dev[1].label, Some(Label::Class(0)));
    assert_eq!(dev[0].guid, "dev_matched-0");
    // Mismatched: an explicit path.
    let mm = t.read(&dir.path().join("dev_mismatched.tsv")).unwrap();
    assert_eq!(mm[0].label, Some(Label::Class(2)));
    let train = t.read_split(dir.path(), Split::Train).unwrap();
    assert_eq!(single(&train[0]), ("P.", Some("H.")));
    assert_eq!(train[0].label, Some(Label::Class(1)));
    let test = t.read_split(dir.path(), Split::Test).unwrap();
    assert_eq!(test[0].label, None);
}

#[test]
fn stsb_regression_format_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let header =
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
    let mut body = String::from(header);
    let scores = [5.0, 3.8, 3.8, 2.6, 4.25];
    for (i, s) in scores.iter().enumerate() {
        body += &format!("{i}\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off {i}.\tAn air plane is taking off.\t{s}\n");
    }
    tmp_file(&dir, "dev.tsv", &body);
    tmp_file(
        &dir,
        "test.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA girl.\tA boy.\n",
    );
    let t = task("glue/stsb");
    assert_eq!(t.kind(), TaskKind::Regression);
    assert!(t.label_names().is_empty());
    let ex = t.read_split(dir.path(), Split::Dev).unwrap();
    assert_eq!(
        single(&ex[0]),
        (
            "A plane is taking off 0.",
            Some("An air plane is taking off.")
        )
    );
    assert_eq!(ex[1].label, Some(Label::Score(3.8)));
    let test = t.read_split(dir.path(), Split::Test).unwrap();
    assert_eq!(test[0].label, None);
    // Predictions [4.5, 3.0, 3.5, 1.0, 4.0] against gold [5, 3.8, 3.8, 2.6, 4.25]:
    // scipy pearsonr = 0.9676622713970113 (gold rounded through f32, as Label
    // stores it), spearmanr = 0.9746794344808964 (gold has a tie at 3.8).
    let preds: Vec<Prediction> = [4.5, 3.0, 3.5, 1.0, 4.0]
        .iter()
        .map(|&p| Prediction::Score(p))
        .collect();
    let m = t.metrics(&ex, &preds).unwrap();
    assert!((m["pearson"] - 0.9676622713970113).abs() < 1e-12, "{m:?}");
    assert!((m["spearman"] - 0.9746794344808964).abs() < 1e-12, "{m:?}");
    assert_eq!(t.main_metric(), "pearson");
    // Class predictions for a regression task are refused.
    assert!(t.metrics(&ex, &[Prediction::Class(0); 5]).is_err());
}

// ---------------------------------------------------------------------------
// Custom classification.

fn custom(text: &[&str], label: Option<&str>, labels: Option<&[&str]>) -> Box<dyn Task> {
    task_by_name(
        "custom/classification",
        &TaskOptions {
            text_fields: text.iter().map(|s| s.to_string()).collect(),
            label_field: label.map(str::to_string),
            labels: labels.map(|l| l.iter().map(|s| s.to_string()).collect()),
        },
    )
    .unwrap()
}

#[test]
fn custom_csv_with_quoting() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "train.csv",
        "id,review,stars\r\n1,\"Great, really \"\"great\"\"\",pos\r\n2,\"two\nlines\",neg\r\n3,meh,neu\r\n",
    );
    let t = custom(&["review"], Some("stars"), None);
    let ex = t.read(&p).unwrap();
    assert_eq!(t.label_names(), ["neg", "neu", "pos"]); // sorted distinct
    assert_eq!(single(&ex[0]), ("Great, really \"great\"", None));
    assert_eq!(single(&ex[1]), ("two\nlines", None));
    assert_eq!(
        ex.iter().map(|e| e.label).collect::<Vec<_>>(),
        vec![
            Some(Label::Class(2)),
            Some(Label::Class(0)),
            Some(Label::Class(1))
        ]
    );
    assert_eq!(t.split_path(dir.path(), Split::Train), p);
    // A dev file read with the same task maps onto train's labels.
    let dev = tmp_file(&dir, "dev.csv", "review,stars\nok,pos\nbad,neg\n");
    let d = t.read(&dev).unwrap();
    assert_eq!(d[1].label, Some(Label::Class(0)));
    let bad = tmp_file(&dir, "dev2.csv", "review,stars\nok,pos\nhuh,mixed\n");
    assert_has(
        &err_of(&*t, &bad),
        &[
            "dev2.csv",
            "line 3",
            "unknown label \"mixed\"",
            "neg, neu, pos",
        ],
    );
}

#[test]
fn custom_tsv_with_and_without_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(&dir, "train.tsv", "a\tb\tlabel\nx \"q\tyy\tyes\nz\tw\tno\n");
    let t = custom(&["a", "b"], None, Some(&["no", "yes"]));
    let ex = t.read(&p).unwrap();
    assert_eq!(single(&ex[0]), ("x \"q", Some("yy")));
    assert_eq!(ex[0].label, Some(Label::Class(1)));
    // Headerless: column indices.
    let p = tmp_file(&dir, "plain.tsv", "s1\t1\tfirst\ns2\t0\tsecond\n");
    let t = custom(&["2"], Some("1"), None);
    let ex = t.read(&p).unwrap();
    assert_eq!(single(&ex[0]), ("first", None));
    assert_eq!(t.label_names(), ["0", "1"]);
    assert_eq!(ex[0].label, Some(Label::Class(1)));
    // Headerless without a label column given: unlabeled.
    let ex = custom(&["0", "2"], None, None).read(&p).unwrap();
    assert_eq!(single(&ex[1]), ("s2", Some("second")));
    assert_eq!(ex[1].label, None);
}

#[test]
fn custom_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "train.jsonl",
        "{\"text\": \"good\", \"label\": 1}\n\n{\"text\": \"bad\", \"label\": 0}\n",
    );
    let t = custom(&[], None, None); // defaults: "text", "label"
    let ex = t.read(&p).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(t.label_names(), ["0", "1"]);
    assert_eq!(ex[0].label, Some(Label::Class(1)));
    let test = tmp_file(&dir, "test.jsonl", "{\"text\": \"?\"}\n");
    assert_eq!(t.read(&test).unwrap()[0].label, None);
    let m = t
        .metrics(&ex, &[Prediction::Class(1), Prediction::Class(1)])
        .unwrap();
    assert_eq!(m["accuracy"], 0.5);

    // Integer labels take their order by value, not as text ("10" < "2").
    let p = tmp_file(
        &dir,
        "stars.jsonl",
        "{\"text\": \"a\", \"label\": 10}\n{\"text\": \"b\", \"label\": 2}\n{\"text\": \"c\", \"label\": -1}\n",
    );
    let t = custom(&[], None, None);
    let ex = t.read(&p).unwrap();
    assert_eq!(t.label_names(), ["-1", "2", "10"]);
    assert_eq!(ex[0].label, Some(Label::Class(2)));
}

#[test]
fn custom_option_errors() {
    let opts = TaskOptions {
        text_fields: vec!["a".into(), "b".into(), "c".into()],
        ..TaskOptions::default()
    };
    let err = task_by_name("custom/classification", &opts)
        .err()
        .unwrap()
        .to_string();
    assert_has(&err, &["1 or 2 text fields"]);
    let opts = TaskOptions {
        labels: Some(vec!["x".into(), "x".into()]),
        ..TaskOptions::default()
    };
    let err = task_by_name("custom/classification", &opts)
        .err()
        .unwrap()
        .to_string();
    assert_has(&err, &["duplicates"]);
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(&dir, "data.txt", "x\n");
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &["data.txt", ".csv, .tsv or .jsonl"],
    );
    // The label must not be read as text, and a pair is two columns.
    for (text, label, needle) in [
        (
            vec!["label".to_string()],
            None,
            "both a text field and the label field",
        ),
        (
            vec!["s".into(), "y".into()],
            Some("y".to_string()),
            "both a text field",
        ),
        (vec!["s".into(), "s".into()], None, "given twice"),
    ] {
        let opts = TaskOptions {
            text_fields: text,
            label_field: label,
            ..TaskOptions::default()
        };
        let err = task_by_name("custom/classification", &opts)
            .err()
            .unwrap()
            .to_string();
        assert_has(&err, &[needle]);
    }
    // A header naming a chosen column twice is ambiguous.
    let p = tmp_file(&dir, "dup.csv", "text,text,label\na,b,x\n");
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &[
            "dup.csv",
            "line 1",
            "names the column \"text\" more than once",
        ],
    );
}

// ---------------------------------------------------------------------------
// Error cases: every message names the file, the line and what was expected.

#[test]
fn error_malformed_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "val.jsonl",
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\", \"idx\": 0}\n{\"premise\": \"a\", \"hypothesis\": \n",
    );
    let err = err_of(&*task("superglue/cb"), &p);
    assert_has(&err, &["val.jsonl", "line 2", "malformed JSON"]);
    let p = tmp_file(&dir, "arr.jsonl", "[1, 2]\n");
    assert_has(
        &err_of(&*task("superglue/cb"), &p),
        &[
            "arr.jsonl",
            "line 1",
            "expected a JSON object, found an array",
        ],
    );
}

#[test]
fn error_missing_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "train.jsonl",
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\", \"idx\": 0}\n{\"hypothesis\": \"b\", \"label\": \"neutral\", \"idx\": 1}\n",
    );
    let err = err_of(&*task("superglue/cb"), &p);
    assert_has(&err, &["train.jsonl: line 2: missing field \"premise\""]);
    // Valid JSON that lacks a field is not "invalid JSON".
    assert!(!err.contains("invalid"), "{err}");
    // Nested: MultiRC answer without text.
    let p = tmp_file(
        &dir,
        "m.jsonl",
        "{\"idx\": 0, \"passage\": {\"text\": \"P\", \"questions\": [{\"question\": \"Q?\", \"idx\": 0, \"answers\": [{\"idx\": 0, \"label\": 1}]}]}}\n",
    );
    assert_has(
        &err_of(&*task("superglue/multirc"), &p),
        &[
            "m.jsonl",
            "line 1",
            "missing field \"passage.questions[0].answers[0].text\"",
        ],
    );
    // A label missing on one line of a labeled file.
    let p = tmp_file(
        &dir,
        "l.jsonl",
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\", \"idx\": 0}\n{\"premise\": \"a\", \"hypothesis\": \"b\", \"idx\": 1}\n",
    );
    assert_has(
        &err_of(&*task("superglue/cb"), &p),
        &["l.jsonl", "line 2", "missing field \"label\""],
    );
    // WSC target span.
    let p = tmp_file(
        &dir,
        "w.jsonl",
        "{\"text\": \"t\", \"target\": {\"span1_text\": \"a\"}, \"idx\": 0, \"label\": true}\n",
    );
    assert_has(
        &err_of(&*task("superglue/wsc"), &p),
        &["w.jsonl", "line 1", "missing field \"target.span2_text\""],
    );
}

#[test]
fn error_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "val.jsonl",
        "{\"question\": \"q\", \"passage\": \"p\", \"label\": \"yes\", \"idx\": 0}\n",
    );
    assert_has(
        &err_of(&*task("superglue/boolq"), &p),
        &[
            "val.jsonl",
            "line 1",
            "field \"label\" must be a boolean",
            "found a string \"yes\"",
        ],
    );
    let p = tmp_file(
        &dir,
        "c.jsonl",
        "{\"premise\": \"p\", \"choice1\": \"a\", \"choice2\": \"b\", \"question\": \"effect\", \"label\": 2, \"idx\": 0}\n",
    );
    assert_has(
        &err_of(&*task("superglue/copa"), &p),
        &["c.jsonl", "line 1", "must be 0 or 1", "found the number 2"],
    );
    let p = tmp_file(
        &dir,
        "q.jsonl",
        "{\"premise\": \"p\", \"choice1\": \"a\", \"choice2\": \"b\", \"question\": \"why\", \"label\": 0, \"idx\": 0}\n",
    );
    assert_has(
        &err_of(&*task("superglue/copa"), &p),
        &["q.jsonl", "line 1", "\"cause\" or \"effect\""],
    );
    let p = tmp_file(
        &dir,
        "n.jsonl",
        "{\"premise\": 3, \"hypothesis\": \"b\", \"idx\": 0}\n",
    );
    assert_has(
        &err_of(&*task("superglue/rte"), &p),
        &[
            "n.jsonl",
            "line 1",
            "field \"premise\" must be a string, found the number 3",
        ],
    );
    // Custom JSONL: a text field that is not a string.
    let p = tmp_file(
        &dir,
        "x.jsonl",
        "{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": [1], \"label\": \"a\"}\n",
    );
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &[
            "x.jsonl",
            "line 2",
            "field \"text\" must be a string, found an array",
        ],
    );
}

#[test]
fn error_unknown_label_lists_known() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "val.jsonl",
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\", \"idx\": 0}\n\n{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"maybe\", \"idx\": 1}\n",
    );
    assert_has(
        &err_of(&*task("superglue/cb"), &p),
        &[
            "val.jsonl",
            "line 3",
            "unknown label \"maybe\"",
            "entailment, contradiction, neutral",
        ],
    );
    let p = tmp_file(
        &dir,
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailed\n",
    );
    assert_has(
        &err_of(&*task("glue/rte"), &p),
        &[
            "dev.tsv",
            "line 2",
            "unknown label \"entailed\"",
            "entailment, not_entailment",
        ],
    );
    let p = tmp_file(&dir, "cola.tsv", "gj04\t1\t\tok.\ngj04\t2\t*\tbad.\n");
    assert_has(
        &err_of(&*task("glue/cola"), &p),
        &["cola.tsv", "line 2", "unknown label \"2\"", "0, 1"],
    );
    let p = tmp_file(&dir, "sts.tsv", "sentence1\tsentence2\tscore\na\tb\thigh\n");
    assert_has(
        &err_of(&*task("glue/stsb"), &p),
        &["sts.tsv", "line 2", "expected a number", "\"high\""],
    );
}

#[test]
fn error_tsv_column_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(
        &dir,
        "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta \"quoted\tentailment\n",
    );
    assert_has(
        &err_of(&*task("glue/rte"), &p),
        &[
            "train.tsv",
            "line 3",
            "expected 4 tab-separated columns as in the header, found 3",
        ],
    );
    let p = tmp_file(&dir, "cola.tsv", "gj04\t1\t\tok.\ngj04\t1\tok too\n");
    assert_has(
        &err_of(&*task("glue/cola"), &p),
        &[
            "cola.tsv",
            "line 2",
            "expected 4 tab-separated columns",
            "found 3",
        ],
    );
    let p = tmp_file(
        &dir,
        "hdr.tsv",
        "index\tsentence\tlabel\n0\ta\tentailment\n",
    );
    assert_has(
        &err_of(&*task("glue/rte"), &p),
        &[
            "hdr.tsv",
            "line 1",
            "no column \"sentence1\"",
            "found: index, sentence, label",
        ],
    );
    // Custom CSV: ragged row and an unclosed quote.
    let p = tmp_file(&dir, "r.csv", "text,label\na,x\nb\n");
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &["r.csv", "line 3", "expected 2 columns", "found 1"],
    );
    let p = tmp_file(&dir, "q.csv", "text,label\na,x\n\"open,y\n");
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &["q.csv", "line 3", "never closed"],
    );
    let p = tmp_file(&dir, "h.csv", "sentence,label\na,x\n");
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &[
            "h.csv",
            "line 1",
            "no text column \"text\"",
            "found: sentence, label",
        ],
    );
}

#[test]
fn error_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = tmp_file(&dir, "val.jsonl", "\n\n");
    assert_has(
        &err_of(&*task("superglue/cb"), &p),
        &["val.jsonl", "no examples"],
    );
    let p = tmp_file(&dir, "dev.tsv", "");
    assert_has(
        &err_of(&*task("glue/sst2"), &p),
        &["dev.tsv", "no examples"],
    );
    let p = tmp_file(&dir, "dev2.tsv", "sentence\tlabel\n");
    assert_has(
        &err_of(&*task("glue/sst2"), &p),
        &["dev2.tsv", "no examples", "only a header"],
    );
    let p = tmp_file(&dir, "e.csv", "text,label\n");
    assert_has(
        &err_of(&*custom(&[], None, None), &p),
        &["e.csv", "no examples"],
    );
    let p = tmp_file(
        &dir,
        "m.jsonl",
        "{\"idx\": 0, \"passage\": {\"text\": \"P\", \"questions\": []}}\n",
    );
    assert_has(
        &err_of(&*task("superglue/multirc"), &p),
        &["m.jsonl", "no examples"],
    );
}

#[test]
fn task_registry() {
    let err = task_by_name("superglue/record", &TaskOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert_has(
        &err,
        &[
            "unknown task \"superglue/record\"",
            "superglue/cb",
            "glue/stsb",
            "custom/classification",
        ],
    );
    assert_eq!(
        task_dir(Path::new("/d"), "glue/sst2"),
        Some(PathBuf::from("/d/glue/SST-2"))
    );
    assert_eq!(task_dir(Path::new("/d"), "custom/classification"), None);
}
