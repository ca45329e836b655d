//! SQuAD: reading the real files (`$PTUNING_DATA`, default `../shared/data`
//! beside the crate), windows against HF's fast tokenizer run through the
//! official P-Tuning v2 feature code, post-processing and metrics against the
//! official scripts (goldens by tools/squad_golden.py in
//! tests/fixtures/squad/), and the error and streaming behaviour.
//!
//! The MiniLM tokenizer comes from the cache scripts/fetch-model.sh fills
//! (or $PTUNING_MODEL_DIR); the RoBERTa check uses tests/fixtures/tiny-roberta.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ptuning::model::hub::default_model_dir;
use ptuning::model::tokenizer::Tokenizer;
use ptuning::tasks::squad::*;
use serde_json::Value;
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn squad_dir() -> PathBuf {
    let data = std::env::var_os("PTUNING_DATA")
        .map_or_else(|| root().join("../shared/data"), PathBuf::from);
    let dir = data.join("squad_v1.1");
    assert!(
        dir.join("dev.json").is_file(),
        "SQuAD data not found at {} (set PTUNING_DATA)",
        dir.display()
    );
    dir
}

fn fixture(name: &str) -> Value {
    let path = root().join("tests/fixtures/squad").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn minilm() -> Tokenizer {
    let dir = std::env::var_os("PTUNING_MODEL_DIR").map_or_else(default_model_dir, PathBuf::from);
    assert!(
        dir.join("tokenizer.json").exists(),
        "{} has no tokenizer.json: run scripts/fetch-model.sh first",
        dir.display()
    );
    Tokenizer::from_dir(&dir).unwrap()
}

fn tokenizer(name: &str) -> Tokenizer {
    match name {
        "minilm" => minilm(),
        "tiny-roberta" => Tokenizer::from_dir(&root().join("tests/fixtures/tiny-roberta")).unwrap(),
        "tiny-roberta-prefix" => Tokenizer::from_file(
            &root().join("tests/fixtures/squad/tiny-roberta-prefix/tokenizer.json"),
            1,
        )
        .unwrap(),
        other => panic!("unknown tokenizer {other}"),
    }
}

fn read(name: &str) -> SquadRead {
    read_squad(&squad_dir().join(name), false).unwrap()
}

fn example_from_json(v: &Value) -> SquadExample {
    let answers: Vec<Answer> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| Answer {
            text: a["text"].as_str().unwrap().to_string(),
            start: a["start"].as_u64().unwrap() as usize,
        })
        .collect();
    SquadExample {
        id: v["id"].as_str().unwrap().to_string(),
        question: v["question"].as_str().unwrap().to_string(),
        context: v["context"].as_str().unwrap().to_string(),
        is_impossible: answers.is_empty(),
        answers,
    }
}

fn fixture_examples(golden: &Value) -> Vec<SquadExample> {
    golden["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(example_from_json)
        .collect()
}

fn offsets_from_json(v: &Value) -> Vec<Option<(usize, usize)>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o.as_array().map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                )
            })
        })
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tmp_file(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

// ---------------------------------------------------------------------------
// Reading

#[test]
fn real_files_have_the_documented_counts() {
    // SOURCE.md: train.json 7235 questions, dev.json 1746; every answer is
    // aligned, so nothing is skipped.
    let train = read("train.json");
    assert_eq!(train.examples.len(), 7235);
    assert_eq!(train.skipped_misaligned, 0);
    let dev = read("dev.json");
    assert_eq!(dev.examples.len(), 1746);
    assert_eq!(dev.skipped_misaligned, 0);

    let first = &dev.examples[0];
    assert_eq!(
        first.context.chars().take(12).collect::<String>(),
        "Jacksonville"
    );
    assert!(!first.is_impossible);
    assert!(dev.examples.iter().all(|e| !e.answers.is_empty()));
    // Dev questions carry several reference answers.
    let multi = dev.examples.iter().filter(|e| e.answers.len() >= 3).count();
    assert!(multi > 1500, "{multi}");
    // Answer offsets are char offsets: check them on non-ASCII contexts.
    for e in train.examples.iter().chain(&dev.examples) {
        for a in &e.answers {
            let got: String = e
                .context
                .chars()
                .skip(a.start)
                .take(a.text.chars().count())
                .collect();
            assert_eq!(got, a.text, "{}", e.id);
        }
    }
    assert!(train.examples.iter().any(|e| !e.context.is_ascii()));
}

#[test]
fn fixture_examples_are_the_real_ones() {
    let golden = fixture("features.json");
    let mut real: BTreeMap<String, SquadExample> = BTreeMap::new();
    for e in read("dev.json")
        .examples
        .into_iter()
        .chain(read("train.json").examples)
    {
        real.insert(e.id.clone(), e);
    }
    let mut n = 0;
    for e in fixture_examples(&golden) {
        if let Some(r) = real.get(&e.id) {
            assert_eq!(&e, r);
            n += 1;
        }
    }
    assert!(n >= 19, "{n}");
}

#[test]
fn misaligned_answer_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Café au lait is served in Paris.", "qas": [
            {"id": "ok", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 26}]},
            {"id": "bad", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 27}]},
            {"id": "late-bad", "question": "What?", "answers": [
                {"text": "Café", "answer_start": 0}, {"text": "lait", "answer_start": 3}]},
            {"id": "empty", "question": "What?", "answers": [{"text": "", "answer_start": 0}]},
            {"id": "past-end", "question": "What?", "answers": [{"text": "x", "answer_start": 999}]}
        ]}]}]}"#;
    let p = tmp_file(&dir, "train.json", json);
    let r = read_squad(&p, false).unwrap();
    let ids: Vec<&str> = r.examples.iter().map(|e| e.id.as_str()).collect();
    // "Paris" is at char 26 (byte 27: "é" is two bytes): char offsets.
    assert_eq!(ids, ["ok", "late-bad"]);
    assert_eq!(r.skipped_misaligned, 3);
    assert_eq!(r.examples[1].answers.len(), 2, "later answers are kept");
}

#[test]
fn reading_errors_name_file_line_and_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = |name: &str, content: &str, v2: bool| {
        let p = tmp_file(&dir, name, content);
        let e = read_squad(&p, v2).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        e
    };

    let e = err(
        "syntax.json",
        "{\"data\": [\n  {\"title\": \"x\",\n   \"paragraphs\": [}\n]}",
        false,
    );
    assert!(e.contains("line 3, column 19"), "{e}");

    let good_qa = r#"{"id": "a", "question": "q", "answers": [{"text": "c", "answer_start": 0}]}"#;
    let doc = |qas: &str| {
        format!(
            r#"{{"data": [{{"paragraphs": [{{"context": "c", "qas": [{good_qa}]}}, {{"context": "c", "qas": [{qas}]}}]}}]}}"#
        )
    };
    let e = err(
        "noid.json",
        &doc(r#"{"question": "q", "answers": []}"#),
        false,
    );
    assert!(
        e.contains("data[0].paragraphs[1].qas[0].id: missing"),
        "{e}"
    );

    let e = err(
        "start.json",
        &doc(r#"{"id": "b", "question": "q", "answers": [{"text": "c", "answer_start": "0"}]}"#),
        false,
    );
    assert!(
        e.contains(
            "data[0].paragraphs[1].qas[0].answers[0].answer_start: expected a non-negative integer"
        ),
        "{e}"
    );

    let e = err(
        "qtype.json",
        &doc(r#"{"id": "b", "question": 3, "answers": []}"#),
        false,
    );
    assert!(
        e.contains("data[0].paragraphs[1].qas[0].question: expected a string, found a number"),
        "{e}"
    );

    let e = err("dup.json", &doc(good_qa), false);
    assert!(
        e.contains("data[0].paragraphs[1].qas[0].id: duplicate question id \"a\""),
        "{e}"
    );

    let e = err("nodata.json", r#"{"version": "1.1"}"#, false);
    assert!(e.contains("data: missing"), "{e}");

    let e = err(
        "noctx.json",
        r#"{"data": [{"paragraphs": [{"qas": []}]}]}"#,
        false,
    );
    assert!(e.contains("data[0].paragraphs[0].context: missing"), "{e}");

    let impossible = doc(r#"{"id": "b", "question": "q", "answers": [], "is_impossible": true}"#);
    let e = err("v2.json", &impossible, false);
    assert!(
        e.contains("data[0].paragraphs[1].qas[0].is_impossible"),
        "{e}"
    );
    assert!(e.contains("version 2"), "{e}");

    let missing = dir.path().join("absent.json");
    let e = read_squad(&missing, false).unwrap_err().to_string();
    assert!(e.contains("absent.json"), "{e}");
}

#[test]
fn version_2_reads_unanswerable_questions() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": "The cat sat on the mat.", "qas": [
            {"id": "has", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}], "is_impossible": false},
            {"id": "flag", "question": "Who stood?", "answers": [], "plausible_answers": [{"text": "cat", "answer_start": 4}], "is_impossible": true},
            {"id": "empty", "question": "Who ran?", "answers": []}
        ]}]}]}"#;
    let p = tmp_file(&dir, "v2.json", json);
    let r = read_squad(&p, true).unwrap();
    let flags: Vec<(&str, bool, usize)> = r
        .examples
        .iter()
        .map(|e| (e.id.as_str(), e.is_impossible, e.answers.len()))
        .collect();
    assert_eq!(
        flags,
        [("has", false, 1), ("flag", true, 0), ("empty", true, 0)]
    );

    // Unanswerable questions train towards [CLS] in every window.
    let tok = minilm();
    let feats = qa_features_vec(&tok, &r.examples, MAX_SEQ_LEN, DOC_STRIDE).unwrap();
    assert_eq!(feats.len(), 3);
    assert!(!feats[0].is_null_target());
    assert!(feats[1].is_null_target() && feats[2].is_null_target());

    // The v2 evaluation: "" is the only right answer to an impossible one.
    let preds: BTreeMap<String, String> = [("has", "the cat"), ("flag", ""), ("empty", "cat")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let m = squad_metrics(&r.examples, &preds).unwrap();
    let expect = |k: &str, v: f64| assert!((m[k] - v).abs() < 1e-9, "{k}: {} vs {v}", m[k]);
    expect("exact_match", 200.0 / 3.0);
    expect("f1", 200.0 / 3.0);
    expect("total", 3.0);
    expect("HasAns_exact", 100.0);
    expect("HasAns_total", 1.0);
    expect("NoAns_exact", 50.0);
    expect("NoAns_f1", 50.0);
    expect("NoAns_total", 2.0);
}

// ---------------------------------------------------------------------------
// Features

fn check_config(golden: &Value, config: &Value) {
    let examples = fixture_examples(golden);
    let name = config["tokenizer"].as_str().unwrap();
    let max_len = config["max_len"].as_u64().unwrap() as usize;
    let stride = config["stride"].as_u64().unwrap() as usize;
    let expected = config["features"].as_array().unwrap();
    // The golden covers a subset of the examples for some configurations.
    let ids: Vec<&str> = expected
        .iter()
        .map(|f| f["example_id"].as_str().unwrap())
        .collect();
    let mut subset: Vec<SquadExample> = Vec::new();
    for id in &ids {
        if subset.last().is_none_or(|e| e.id != *id) {
            subset.push(examples.iter().find(|e| e.id == *id).unwrap().clone());
        }
    }
    let tok = tokenizer(name);
    let got = qa_features_vec(&tok, &subset, max_len, stride).unwrap();
    assert_eq!(got.len(), expected.len(), "{name} {max_len}: window count");
    let mut edge_cases = 0;
    for (k, (g, want)) in got.iter().zip(expected).enumerate() {
        let what = format!(
            "{name} {max_len}/{stride} window {k} ({})",
            want["example_id"]
        );
        assert_eq!(
            subset[g.example_index].id,
            want["example_id"].as_str().unwrap(),
            "{what}"
        );
        assert_eq!(g.ids, u32s(&want["ids"]), "{what}: ids");
        assert_eq!(g.type_ids, u32s(&want["type_ids"]), "{what}: type ids");
        assert_eq!(
            g.context_offsets,
            offsets_from_json(&want["offsets"]),
            "{what}: offsets"
        );
        assert_eq!(
            g.start,
            want["start"].as_u64().unwrap() as usize,
            "{what}: start"
        );
        assert_eq!(g.end, want["end"].as_u64().unwrap() as usize, "{what}: end");
        assert!(g.len() <= max_len);
        if let Some(official) = want.get("official_start") {
            // The official loop labels the last padding position; we label
            // the last context token, where the answer starts.
            edge_cases += 1;
            assert_eq!(official.as_u64().unwrap() as usize, max_len - 1);
            let last_ctx = g.context_offsets.iter().rposition(Option::is_some).unwrap();
            assert_eq!(g.start, last_ctx, "{what}");
        }
    }
    assert!(edge_cases >= 1, "the golden exercises the start edge case");
}

#[test]
fn features_match_hf_minilm_384() {
    let golden = fixture("features.json");
    let config = &golden["configs"][0];
    assert_eq!(
        (config["max_len"].as_u64(), config["stride"].as_u64()),
        (Some(384), Some(128))
    );
    check_config(&golden, config);
    // Several examples span more than one window.
    let feats = config["features"].as_array().unwrap();
    let long = feats.iter().filter(|f| f["example_id"] == "long-0").count();
    assert!(long >= 3, "{long}");
}

#[test]
fn features_match_hf_minilm_128() {
    let golden = fixture("features.json");
    let config = &golden["configs"][1];
    assert_eq!(config["max_len"].as_u64(), Some(128));
    check_config(&golden, config);
}

#[test]
fn features_match_hf_roberta_template() {
    let golden = fixture("features.json");
    let config = &golden["configs"][2];
    assert_eq!(config["tokenizer"], "tiny-roberta");
    check_config(&golden, config);
}

/// RoBERTa with `add_prefix_space`: the first context token of every window
/// keeps its leading space in the offsets (tokenizers trims offsets per
/// window and treats each window's first token as a sequence start).
#[test]
fn features_match_hf_roberta_prefix_space_trimming() {
    let golden = fixture("features.json");
    let config = &golden["configs"][3];
    assert_eq!(config["tokenizer"], "tiny-roberta-prefix");
    check_config(&golden, config);
    let examples = fixture_examples(&golden);
    let untrimmed_starts = config["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            let ctx = &examples
                .iter()
                .find(|e| e.id == f["example_id"].as_str().unwrap())
                .unwrap()
                .context;
            let first = offsets_from_json(&f["offsets"])
                .into_iter()
                .flatten()
                .next()
                .unwrap();
            ctx.chars().nth(first.0) == Some(' ') && first.1 > first.0
        })
        .count();
    assert!(untrimmed_starts >= 3, "{untrimmed_starts}");
}

/// Our lazily built windows against `tokenizers`' own truncation with
/// overflow (`truncate_encodings` + the post-processor, the path HF's Python
/// tokenizer takes), on the whole dev set at the official settings.
///
/// The raw sequences are encoded without truncation: with truncation set,
/// `Tokenizer::encode` of tokenizers 0.23.2 stops tokenizing each sequence
/// after `max_length` tokens (an early exit that ignores the stride), so its
/// overflowing windows lose the end of long contexts. Python's tokenizers
/// 0.23.3 does not (this dev example is the golden's 2-window one).
#[test]
fn windows_match_tokenizers_overflow_on_dev() {
    let tok = minilm();
    let dev = read("dev.json").examples;
    let mut truncating = tok.inner().clone();
    truncating
        .with_truncation(Some(TruncationParams {
            max_length: MAX_SEQ_LEN,
            stride: DOC_STRIDE,
            strategy: TruncationStrategy::OnlySecond,
            direction: TruncationDirection::Right,
        }))
        .unwrap();
    let ours = qa_features(&tok, &dev, MAX_SEQ_LEN, DOC_STRIDE);
    let mut raw = tok.inner().clone();
    raw.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
    let mut theirs = Vec::new();
    for (i, e) in dev.iter().enumerate() {
        let q = raw
            .encode_char_offsets(e.question.trim_start(), false)
            .unwrap();
        let mut c = raw.encode_char_offsets(e.context.as_str(), false).unwrap();
        // What `encode` does for the second sequence (the template retypes
        // only the first window, overflowing ones keep these).
        c.set_type_ids(vec![1; c.len()]);
        let mut enc = truncating.post_process(q, Some(c), true).unwrap();
        let over = enc.take_overflowing();
        for w in std::iter::once(enc).chain(over) {
            theirs.push((i, w));
        }
    }
    let mut n = 0;
    let mut multi = 0;
    for (got, (i, want)) in ours.zip(&theirs) {
        let got = got.unwrap();
        assert_eq!(got.example_index, *i);
        assert_eq!(got.ids, want.get_ids(), "{}", dev[*i].id);
        assert_eq!(got.type_ids, want.get_type_ids());
        let offsets: Vec<Option<(usize, usize)>> = want
            .get_sequence_ids()
            .into_iter()
            .zip(want.get_offsets())
            .map(|(s, &o)| (s == Some(1)).then_some(o))
            .collect();
        assert_eq!(got.context_offsets, offsets);
        n += 1;
        if n > 1 && theirs[n - 2].0 == *i {
            multi += 1;
        }
    }
    assert_eq!(n, theirs.len());
    assert!(
        n > dev.len() && multi > 0,
        "{n} windows for {} questions",
        dev.len()
    );
}

/// On every train window whose target is an answer, the target tokens
/// cover the answer text and nothing beyond the tokens it touches.
#[test]
fn training_targets_cover_the_answers() {
    let tok = minilm();
    let train = read("train.json").examples;
    let mut answered = 0;
    let mut exact = 0;
    let mut windows = 0;
    for f in qa_features(&tok, &train, MAX_SEQ_LEN, DOC_STRIDE) {
        let f = f.unwrap();
        windows += 1;
        if f.is_null_target() {
            continue;
        }
        answered += 1;
        let e = &train[f.example_index];
        let a = &e.answers[0];
        let (s, _) = f.context_offsets[f.start].unwrap();
        let (_, t) = f.context_offsets[f.end].unwrap();
        let a_end = a.start + a.text.chars().count();
        assert!(
            s <= a.start && a_end <= t,
            "{}: [{s},{t}) vs [{}, {a_end})",
            e.id,
            a.start
        );
        assert!(f.start <= f.end);
        let span: String = e.context.chars().skip(s).take(t - s).collect();
        if span == a.text {
            exact += 1;
        }
    }
    assert!(
        windows >= train.len() && answered >= train.len() - 50,
        "{answered}/{windows}"
    );
    // Answers cut inside a word (e.g. "Broncos" of "Broncos'") are rare.
    assert!(exact as f64 / answered as f64 > 0.97, "{exact}/{answered}");
}

#[test]
fn long_context_streams_windows_lazily() {
    let tok = minilm();
    let sentence = "The quick brown fox number {} jumps over the lazy dog near the river bank. ";
    let mut context = String::new();
    let mut k = 0;
    while context.chars().count() < 50_000 {
        context.push_str(&sentence.replace("{}", &k.to_string()));
        k += 1;
    }
    let answer_start = context.find("number 500 ").unwrap();
    let long = SquadExample {
        id: "long".into(),
        question: "  Which fox jumps?".into(),
        context: context.clone(),
        answers: vec![Answer {
            text: "number 500".into(),
            start: answer_start,
        }],
        is_impossible: false,
    };
    let short = SquadExample {
        id: "short".into(),
        question: "Who?".into(),
        context: "Me.".into(),
        answers: vec![Answer {
            text: "Me".into(),
            start: 0,
        }],
        is_impossible: false,
    };
    let examples = [long, short];

    // The count of windows is known before any window is built.
    let featurizer = QaFeaturizer::new(&tok, MAX_SEQ_LEN, DOC_STRIDE);
    let windows = featurizer.windows(&examples[0], 0).unwrap();
    let n = windows.len();
    assert!(n > 40, "{n} windows");
    assert_eq!(windows.size_hint(), (n, Some(n)));

    let mut it = qa_features(&tok, &examples, MAX_SEQ_LEN, DOC_STRIDE);
    let first = it.next().unwrap().unwrap();
    assert_eq!(first.example_index, 0);
    assert_eq!(first.len(), MAX_SEQ_LEN);
    assert!(it.size_hint().0 >= n, "{:?}", it.size_hint());

    let mut prev = first;
    let mut with_answer = 0;
    // `seen`: windows of the long example so far.
    for (seen, f) in (1..).zip(it.by_ref()) {
        let f = f.unwrap();
        if f.example_index == 1 {
            assert_eq!(seen, n);
            assert!(!f.is_null_target());
            break;
        }
        assert!(f.len() <= MAX_SEQ_LEN);
        // Consecutive windows share exactly `stride` context tokens.
        let ctx = |g: &QaFeature| {
            g.context_offsets
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        };
        let (a, b) = (ctx(&prev), ctx(&f));
        assert_eq!(a[a.len() - DOC_STRIDE..], b[..DOC_STRIDE]);
        if !f.is_null_target() {
            with_answer += 1;
            let (s, _) = f.context_offsets[f.start].unwrap();
            assert_eq!(s, answer_start);
        }
        prev = f;
    }
    assert!(it.next().is_none());
    assert!(with_answer >= 1);
    // The last window ends at the end of the context.
    let last_end = prev.context_offsets.iter().flatten().last().unwrap().1;
    assert_eq!(
        last_end,
        context.chars().count() - 1,
        "the final space has no token"
    );
}

#[test]
fn too_long_question_is_an_error_and_the_stream_goes_on() {
    let tok = minilm();
    let ctx = "word ".repeat(200);
    let long_q = SquadExample {
        id: "q-long".into(),
        question: "why ".repeat(100),
        context: ctx.clone(),
        answers: vec![],
        is_impossible: false,
    };
    let ok = SquadExample {
        id: "q-ok".into(),
        question: "why?".into(),
        context: ctx,
        answers: vec![],
        is_impossible: false,
    };
    let examples = [long_q, ok];
    let mut it = qa_features(&tok, &examples, 64, 16);
    let e = it.next().unwrap().unwrap_err().to_string();
    assert!(
        e.contains("q-long") && e.contains("no room for the context"),
        "{e}"
    );
    let next = it.next().unwrap().unwrap();
    assert_eq!(next.example_index, 1);

    // A stride as large as the context budget: an error, not a panic.
    let e = qa_features_vec(&tok, &examples[1..], 64, 60)
        .unwrap_err()
        .to_string();
    assert!(e.contains("doc stride 60"), "{e}");
}

// ---------------------------------------------------------------------------
// Post-processing

#[test]
fn postprocess_matches_official() {
    let golden = fixture("postprocess.json");
    let all = fixture_examples(&fixture("features.json"));
    let ids: Vec<&str> = golden["example_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let examples: Vec<SquadExample> = ids
        .iter()
        .map(|id| all.iter().find(|e| e.id == *id).unwrap().clone())
        .collect();
    let mut features = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for f in golden["features"].as_array().unwrap() {
        let index = ids.iter().position(|id| *id == f["example_id"]).unwrap();
        features.push((index, offsets_from_json(&f["offsets"])));
        starts.push(f32s(&f["start_logits"]));
        ends.push(f32s(&f["end_logits"]));
    }
    // Logits cover the padded 384 positions, offsets only the real tokens.
    assert!(features
        .iter()
        .zip(&starts)
        .any(|((_, o), s)| o.len() < s.len()));
    let windows_per_example = |i| features.iter().filter(|(e, _)| *e == i).count();
    assert!((0..examples.len()).any(|i| windows_per_example(i) >= 3));

    for case in golden["cases"].as_array().unwrap() {
        let opts = PostprocessOptions {
            n_best: golden["n_best"].as_u64().unwrap() as usize,
            max_answer_len: golden["max_answer_len"].as_u64().unwrap() as usize,
            version_2: case["version_2"].as_bool().unwrap(),
            null_score_diff_threshold: case["null_score_diff_threshold"].as_f64().unwrap() as f32,
        };
        let want: BTreeMap<String, String> = case["predictions"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let got = postprocess(&examples, &features, &starts, &ends, &opts).unwrap();
        assert_eq!(got, want, "{opts:?}");

        // Streaming, window by window, gives the same answers.
        let mut post = Postprocessor::new(&examples, opts);
        for (((i, o), s), e) in features.iter().zip(&starts).zip(&ends) {
            post.push(*i, o, s, e).unwrap();
        }
        assert_eq!(post.finish(), want);
    }
    // The golden has the official "empty" fallback and v2 null answers.
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases[0]["predictions"]
        .as_object()
        .unwrap()
        .values()
        .any(|v| v == "empty"));
    assert!(cases[1]["predictions"]
        .as_object()
        .unwrap()
        .values()
        .any(|v| v == ""));
}

fn one_example(context: &str) -> SquadExample {
    SquadExample {
        id: "x".into(),
        question: "q".into(),
        context: context.into(),
        answers: vec![],
        is_impossible: true,
    }
}

#[test]
fn v2_null_threshold_and_minimum_over_windows() {
    // [CLS] q [SEP] c0 c1 c2 [SEP]: tokens 3..5 are context.
    let ex = [one_example("alpha beta gamma")];
    let offsets = vec![
        None,
        None,
        None,
        Some((0, 5)),
        Some((6, 10)),
        Some((11, 16)),
        None,
    ];
    let mut s = vec![0.0f32; 7];
    let mut e = vec![0.0f32; 7];
    s[4] = 2.0;
    e[5] = 1.5; // best span "beta gamma": 3.5
    s[0] = 2.0;
    e[0] = 2.5; // null 4.5 in this window
    let opts = |t: f32, v2: bool| PostprocessOptions {
        version_2: v2,
        null_score_diff_threshold: t,
        ..PostprocessOptions::default()
    };
    let run = |windows: &[(Vec<f32>, Vec<f32>)], o: PostprocessOptions| {
        let mut p = Postprocessor::new(&ex, o);
        for (s, e) in windows {
            p.push(0, &offsets, s, e).unwrap();
        }
        p.finish()["x"].clone()
    };
    let w1 = vec![(s.clone(), e.clone())];
    assert_eq!(run(&w1, opts(0.0, false)), "beta gamma");
    // diff = 4.5 - 3.5 = 1.0.
    assert_eq!(run(&w1, opts(0.0, true)), "");
    assert_eq!(run(&w1, opts(0.99, true)), "");
    assert_eq!(
        run(&w1, opts(1.0, true)),
        "beta gamma",
        "only diff > threshold is null"
    );
    assert_eq!(run(&w1, opts(5.0, true)), "beta gamma");

    // A second window whose null score is lower (0.5): the minimum counts.
    let mut s2 = vec![-1.0f32; 7];
    let mut e2 = vec![-1.0f32; 7];
    s2[0] = 0.25;
    e2[0] = 0.25;
    let w2 = vec![(s.clone(), e.clone()), (s2.clone(), e2.clone())];
    assert_eq!(
        run(&w2, opts(0.0, true)),
        "beta gamma",
        "diff = 0.5 - 3.5 < 0"
    );
    assert_eq!(run(&w2, opts(-3.5, true)), "");

    // A reversed span is never chosen, however high its score.
    let mut s3 = vec![0.0f32; 7];
    let mut e3 = vec![0.0f32; 7];
    s3[5] = 5.0;
    e3[3] = 5.0;
    e3[5] = 0.1;
    assert_eq!(run(&[(s3, e3)], opts(0.0, false)), "gamma");
    // Nor one longer than max_answer_len tokens. (Equal scores keep the
    // order candidates were found in: start by descending logit, then end
    // by descending logit, equal logits at the higher index first.)
    let mut s4 = vec![0.0f32; 7];
    let mut e4 = vec![0.0f32; 7];
    s4[3] = 4.0;
    e4[5] = 4.0;
    assert_eq!(
        run(&[(s4.clone(), e4.clone())], opts(0.0, false)),
        "alpha beta gamma"
    );
    let short = PostprocessOptions {
        max_answer_len: 2,
        ..PostprocessOptions::default()
    };
    assert_eq!(run(&[(s4, e4)], short), "alpha beta");

    // Mismatched inputs are errors.
    let err = postprocess(
        &ex,
        &[(0, offsets.clone())],
        &[vec![0.0; 7]],
        &[],
        &opts(0.0, false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("1 features but 1 start and 0 end"), "{err}");
    let err = postprocess(
        &ex,
        &[(3, offsets.clone())],
        &[vec![0.0; 7]],
        &[vec![0.0; 7]],
        &opts(0.0, false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("example index 3 is out of range"), "{err}");
}

/// Logits that point at each training target recover the gold answers:
/// features → postprocess → metrics end to end on the real dev set.
#[test]
fn oracle_logits_score_near_100_on_dev() {
    let tok = minilm();
    let dev = read("dev.json").examples;
    let mut post = Postprocessor::new(&dev, PostprocessOptions::default());
    for f in qa_features(&tok, &dev, MAX_SEQ_LEN, DOC_STRIDE) {
        let f = f.unwrap();
        let mut s = vec![0.0f32; MAX_SEQ_LEN];
        let mut e = vec![0.0f32; MAX_SEQ_LEN];
        if !f.is_null_target() {
            s[f.start] = 10.0;
            e[f.end] = 10.0;
        }
        post.push_feature(&f, &s, &e).unwrap();
    }
    let preds = post.finish();
    assert_eq!(preds.len(), dev.len());
    let m = squad_metrics(&dev, &preds).unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["exact_match", "f1"]);
    // 99.83 / 99.98: a few answers end inside a token ("Broncos" of
    // "Broncos'"), so the token span carries extra characters.
    assert!(m["exact_match"] > 99.5 && m["f1"] > 99.9, "{m:?}");
}

// ---------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_match_official_scripts_case_by_case() {
    let golden = fixture("metrics.json");
    for case in golden["cases"].as_array().unwrap() {
        let pred = case["prediction"].as_str().unwrap();
        let golds: Vec<&str> = case["golds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        assert_eq!(
            normalize_answer(pred),
            case["normalized"].as_str().unwrap(),
            "{pred:?}"
        );
        let example = SquadExample {
            id: "c".into(),
            question: "q".into(),
            context: String::new(),
            answers: golds
                .iter()
                .map(|g| Answer {
                    text: g.to_string(),
                    start: 0,
                })
                .collect(),
            is_impossible: golds.is_empty(),
        };
        let preds = BTreeMap::from([("c".to_string(), pred.to_string())]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        if let Some(em) = case.get("v1_exact_match") {
            let f1 = case["v1_f1"].as_f64().unwrap();
            let m = squad_v1_metrics(std::slice::from_ref(&example), &preds).unwrap();
            assert!(
                close(m["exact_match"], 100.0 * em.as_f64().unwrap()),
                "{case}: {m:?}"
            );
            assert!(close(m["f1"], 100.0 * f1), "{case}: {m:?}");
            let best = golds.iter().map(|g| f1_score(pred, g)).fold(0.0, f64::max);
            assert!(close(best, f1), "{case}");
        }
        let m = squad_v2_metrics(std::slice::from_ref(&example), &preds).unwrap();
        assert!(
            close(m["exact_match"], 100.0 * case["v2_exact"].as_f64().unwrap()),
            "{case}: {m:?}"
        );
        assert!(
            close(m["f1"], 100.0 * case["v2_f1"].as_f64().unwrap()),
            "{case}: {m:?}"
        );
    }
}

#[test]
fn metrics_match_official_v1_on_real_dev() {
    let golden = fixture("metrics.json");
    let preds: BTreeMap<String, String> = golden["dev_predictions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let dev = read("dev.json").examples;
    assert!(preds.len() < dev.len(), "some questions are unanswered");
    let m = squad_metrics(&dev, &preds).unwrap();
    let want = &golden["dev_v1"];
    for k in ["exact_match", "f1"] {
        let w = want[k].as_f64().unwrap();
        assert!((m[k] - w).abs() < 1e-9, "{k}: {} vs {w}", m[k]);
    }
}

#[test]
fn metric_errors() {
    let e = squad_metrics(&[], &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no examples"), "{e}");
    let unlabeled = SquadExample {
        id: "u".into(),
        question: "q".into(),
        context: "c".into(),
        answers: vec![],
        is_impossible: false,
    };
    let e = squad_v1_metrics(&[unlabeled], &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("question u has no gold answers"), "{e}");
}

// ---------------------------------------------------------------------------
// predictions.json

#[test]
fn predictions_file_is_the_official_format_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.json");
    std::fs::write(&path, "old").unwrap();
    let preds = BTreeMap::from([
        ("b2".to_string(), "Santa Clara, \"CA\"".to_string()),
        ("a1".to_string(), "Café".to_string()),
        ("c3".to_string(), String::new()),
    ]);
    write_predictions(&path, &preds).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "{\n    \"a1\": \"Café\",\n    \"b2\": \"Santa Clara, \\\"CA\\\"\",\n    \"c3\": \"\"\n}\n"
    );
    let back: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, preds);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["predictions.json"], "no temporary file left");

    let e = write_predictions(&dir.path().join("missing/predictions.json"), &preds)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}
