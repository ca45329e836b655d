//! `ptuning serve`: mixed-task batching against each adapter alone, the HTTP
//! API in-process (tower oneshot) with every error it promises, admin load
//! and unload, metrics, the 503 of a full queue, a seeded fuzz, and over a
//! real loopback socket: request timeouts, early 413s and shutdown (graceful,
//! after the grace period, at a second stop).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use ptuning::engine::cuda::{CudaDevice, CudaEncoder, Precision};
use ptuning::model::batch::Batch;
use ptuning::model::heads::{ClassificationHead, HeadKind};
use ptuning::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
use ptuning::model::prompt_model::PromptModel;
use ptuning::rng::Rng;
use ptuning::serve::batcher::{forward_mixed, plan, Row, Sequence};
use ptuning::serve::registry::ServedAdapter;
use ptuning::serve::{openapi, ServeConfig, Server, Stopped};
use ptuning::tasks::squad::{qa_features_vec, PostprocessOptions, Postprocessor, SquadExample};
use ptuning::tasks::tagging::{
    entity_spans, featurize_tagging, split_words, word_predictions, TaggedSentence,
};
use ptuning::training::checkpoint::{
    created_by, save_checkpoint, BackboneInfo, CheckpointRef, PrefixInfo, RunInfo, TokenizerInfo,
    FORMAT_VERSION,
};
use ptuning::training::evaluate::argmax;
use ptuning::training::trainer::Backbone;

const TOKEN: &str = "s3cret-token";
/// The adapters' max_seq_len (tiny-bert has 64 positions).
const MAX_LEN: usize = 24;
/// The QA adapter's doc stride: context windows overlap by 8 tokens.
const QA_STRIDE: usize = 8;

fn tiny_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert")
}

fn backbone() -> Backbone {
    Backbone::load(tiny_dir().to_str().unwrap()).unwrap()
}

#[derive(Clone)]
struct Spec {
    method: PromptMethod,
    p: usize,
    layers: Vec<usize>,
    projection: bool,
    kind: HeadKind,
    labels: Vec<&'static str>,
    seed: u64,
}

impl Spec {
    fn classes(p: usize, labels: Vec<&'static str>, seed: u64) -> Self {
        Spec {
            method: PromptMethod::PTuningV2,
            p,
            layers: vec![0, 1, 2],
            projection: false,
            kind: HeadKind::Classification,
            labels,
            seed,
        }
    }
}

/// A prefix and head with O(1) values, so that adapters differ clearly.
fn build(spec: &Spec, hash: &str) -> (RunInfo, PrefixEncoder, ClassificationHead) {
    let config = PrefixConfig {
        method: spec.method,
        len: spec.p,
        projection: spec.projection,
        hidden_size: 8,
        layers: spec.layers.clone(),
    };
    let mut prefix = PrefixEncoder::new(config.clone(), 32, 3, spec.seed).unwrap();
    let mut rng = Rng::new(spec.seed + 100);
    for p in prefix.params_mut() {
        rng.fill_normal(&mut p.value, 0.7);
    }
    let outputs = match spec.kind {
        HeadKind::Classification => spec.labels.len(),
        HeadKind::QuestionAnswering => 2,
        HeadKind::TokenClassification => spec.labels.len(),
        _ => 1,
    };
    let mut head = ClassificationHead::for_kind(spec.kind, 32, outputs, spec.seed + 1);
    rng.fill_normal(&mut head.weight.value, 0.5);
    rng.fill_normal(&mut head.bias.value, 0.1);
    let info = RunInfo {
        format_version: FORMAT_VERSION,
        task: match spec.kind {
            HeadKind::QuestionAnswering => "qa/squad",
            HeadKind::TokenClassification => "ner/conll2003",
            _ => "custom/classification",
        }
        .into(),
        head: spec.kind,
        label_names: spec.labels.iter().map(|s| s.to_string()).collect(),
        backbone: BackboneInfo {
            name_or_path: tiny_dir().display().to_string(),
            model_type: "bert".into(),
            hidden_size: 32,
            num_layers: 3,
            num_heads: 4,
            weights_hash: hash.into(),
        },
        tokenizer: TokenizerInfo {
            max_seq_len: MAX_LEN,
            truncation: "longest_first".into(),
        },
        prefix: PrefixInfo::from(&config),
        hyperparameters: match spec.kind {
            HeadKind::QuestionAnswering => json!({"task": "qa/squad", "doc_stride": QA_STRIDE}),
            _ => json!({"task": "custom/classification"}),
        },
        created_by: created_by(),
    };
    (info, prefix, head)
}

fn save(dir: &Path, spec: &Spec, hash: &str) {
    let (info, prefix, head) = build(spec, hash);
    save_checkpoint(
        dir,
        &CheckpointRef {
            info: &info,
            prefix: &prefix,
            head: &head,
            training: None,
        },
    )
    .unwrap();
}

fn served(name: &str, spec: &Spec, b: &Backbone) -> ServedAdapter {
    let (info, prefix, head) = build(spec, &b.hash);
    ServedAdapter::from_parts(name, info, &prefix, head, &b.model.config).unwrap()
}

fn model(spec: &Spec, b: &Backbone) -> PromptModel {
    let (_, prefix, head) = build(spec, &b.hash);
    PromptModel {
        backbone: Arc::clone(&b.model),
        prefix,
        head,
        gpu: None,
    }
}

fn encode(b: &Backbone, text: &str, pair: Option<&str>) -> Sequence {
    let e = b.tokenizer.encode(text, pair, MAX_LEN).unwrap();
    (e.ids, e.type_ids)
}

/// 33 tokens with [CLS] and [SEP] (some words split into pieces), over MAX_LEN.
const LONG: &str =
    "the cat sat on the mat and the dog sat on the cat and it was a very bad day so she is not happy at all";

const TEXTS: &[&str] = &[
    "the cat sat on the mat",
    "a good movie",
    "this book was very bad and not happy",
    "we run",
    "she is walking in the park at night, and it is a big red day!",
    "dog",
    "they play",
];

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mixed_batch_matches_each_adapter_alone() {
    let b = backbone();
    let specs = [
        Spec::classes(4, vec!["x", "y", "z"], 1),
        Spec::classes(4, vec!["yes", "no"], 2),
        Spec {
            projection: true,
            ..Spec::classes(4, vec!["p", "q"], 3)
        },
        Spec {
            p: 3,
            layers: vec![1, 2],
            kind: HeadKind::Regression,
            labels: vec![],
            ..Spec::classes(3, vec![], 4)
        },
        Spec {
            p: 5,
            kind: HeadKind::MultipleChoice,
            labels: vec!["0", "1"],
            ..Spec::classes(5, vec![], 5)
        },
        // Per-token heads share passes with the pooled ones of their shape.
        Spec {
            kind: HeadKind::TokenClassification,
            ..Spec::classes(4, vec!["O", "B-PER", "I-PER"], 6)
        },
        Spec {
            kind: HeadKind::QuestionAnswering,
            labels: vec![],
            ..Spec::classes(4, vec![], 7)
        },
        // Prompt tuning: the prompt in front of the input, a pass of its own
        // (pooled on the first virtual token, tags on the tokens after it).
        Spec {
            method: PromptMethod::PromptTuning,
            layers: vec![],
            ..Spec::classes(4, vec!["u", "v"], 8)
        },
        Spec {
            method: PromptMethod::PromptTuning,
            layers: vec![],
            kind: HeadKind::TokenClassification,
            ..Spec::classes(4, vec!["O", "B-LOC"], 9)
        },
    ];
    let adapters: Vec<ServedAdapter> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| served(&format!("a{i}"), s, &b))
        .collect();
    let models: Vec<PromptModel> = specs.iter().map(|s| model(s, &b)).collect();
    // Interleaved rows: every adapter, text and pair varying, 31 rows.
    let mut rows_spec = Vec::new();
    for r in 0..31 {
        let a = (r * 3 + r / 5) % adapters.len();
        let text = TEXTS[r % TEXTS.len()];
        let pair = (r % 4 == 1).then_some(TEXTS[(r + 2) % TEXTS.len()]);
        rows_spec.push((a, encode(&b, text, pair)));
    }
    let rows: Vec<Row<'_>> = rows_spec
        .iter()
        .map(|(a, s)| Row {
            adapter: &adapters[*a],
            sequence: s,
        })
        .collect();
    // Shapes: (4, all) x5, (3, [1,2]), (5, all), prompt tuning (4) x2 → 4
    // groups; max_batch 4 splits them.
    let passes = plan(&rows, 4);
    assert!(passes.iter().all(|p| p.len() <= 4));
    for pass in &passes {
        assert!(pass
            .iter()
            .all(|&i| rows[i].adapter.same_shape(rows[pass[0]].adapter)));
    }
    let mixed_groups = passes
        .iter()
        .filter(|p| {
            p.iter()
                .any(|&i| !std::ptr::eq(rows[i].adapter, rows[p[0]].adapter))
        })
        .count();
    assert!(
        mixed_groups > 0,
        "the test must exercise passes mixing adapters"
    );
    for max_batch in [4, 32] {
        let mixed = forward_mixed(&b.model, None, b.tokenizer.pad_id(), &rows, max_batch).unwrap();
        let mut worst = 0.0f32;
        for (r, (a, seq)) in rows_spec.iter().enumerate() {
            let batch = Batch::pad(std::slice::from_ref(seq), b.tokenizer.pad_id()).unwrap();
            // [C], or [T, C] over the row's own tokens for per-token heads.
            let alone = models[*a].predict(&batch).unwrap();
            let per_row = if specs[*a].kind.per_token() {
                seq.0.len() * models[*a].head.num_labels()
            } else {
                models[*a].head.num_labels()
            };
            assert_eq!(mixed[r].len(), per_row, "row {r}");
            worst = worst.max(max_diff(&mixed[r], &alone));
        }
        eprintln!("mixed vs alone, max_batch {max_batch}: worst |diff| {worst:e}");
        assert!(worst <= 1e-5, "max_batch {max_batch}: worst {worst}");
    }
    // And each adapter's rows as one batch of their own through predict().
    let mixed = forward_mixed(&b.model, None, b.tokenizer.pad_id(), &rows, 32).unwrap();
    // The same passes with the encoder and the heads on the CUDA engine
    // (kernels.cu emulated on the CPU where g++ is; CI has no GPU): each
    // head's logits come down, never the hidden states.
    if let Err(why) = common::emulator_cxx() {
        eprintln!("{why}: the CUDA engine's serving pass is not checked here");
    } else {
        let dev = CudaDevice::emulated(b.model.config.head_dim()).unwrap();
        let mut enc = CudaEncoder::on(dev, &b.model, Precision::Fp32).unwrap();
        let on_gpu =
            forward_mixed(&b.model, Some(&mut enc), b.tokenizer.pad_id(), &rows, 32).unwrap();
        for (r, (g, c)) in on_gpu.iter().zip(&mixed).enumerate() {
            assert_eq!(g.len(), c.len(), "row {r}");
            let d = max_diff(g, c);
            assert!(d <= 1e-4, "row {r}: CUDA engine vs CPU {d}");
        }
    }
    for (a, m) in models.iter().enumerate() {
        let mine: Vec<usize> = (0..rows_spec.len())
            .filter(|&r| rows_spec[r].0 == a)
            .collect();
        let seqs: Vec<Sequence> = mine.iter().map(|&r| rows_spec[r].1.clone()).collect();
        let batch = Batch::pad(&seqs, b.tokenizer.pad_id()).unwrap();
        let logits = m.predict(&batch).unwrap();
        // Per row: [C], or [T_max, C] whose first T_r tokens are the row's.
        let c = logits.len() / mine.len();
        for (k, &r) in mine.iter().enumerate() {
            let d = max_diff(&mixed[r], &logits[k * c..][..mixed[r].len()]);
            assert!(d <= 1e-5, "adapter {a} row {r}: {d}");
        }
    }
}

/// A server on tiny-bert with adapters on disk: "cls" (3 labels), "cls2"
/// (2 labels, another prefix shape), "reg" (regression), "mc" (multiple
/// choice), "qa" (start/end per token, stride 8), "tok" (tags per token).
struct Fixture {
    server: Server,
    _dir: tempfile::TempDir,
    root: PathBuf,
    hash: String,
}

fn specs() -> Vec<(&'static str, Spec)> {
    vec![
        ("cls", Spec::classes(4, vec!["neg", "neu", "pos"], 11)),
        (
            "cls2",
            Spec {
                layers: vec![2],
                ..Spec::classes(2, vec!["no", "yes"], 12)
            },
        ),
        (
            "reg",
            Spec {
                kind: HeadKind::Regression,
                labels: vec![],
                ..Spec::classes(4, vec![], 13)
            },
        ),
        (
            "mc",
            Spec {
                kind: HeadKind::MultipleChoice,
                labels: vec!["0", "1"],
                ..Spec::classes(4, vec![], 14)
            },
        ),
        (
            "qa",
            Spec {
                kind: HeadKind::QuestionAnswering,
                labels: vec![],
                ..Spec::classes(4, vec![], 16)
            },
        ),
        (
            "tok",
            Spec {
                kind: HeadKind::TokenClassification,
                labels: vec!["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
                ..Spec::classes(4, vec![], 15)
            },
        ),
    ]
}

fn fixture(config: ServeConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let b = backbone();
    let hash = b.hash.clone();
    let server = Server::new(b, tiny_dir().to_str().unwrap(), config);
    for (name, spec) in specs() {
        let path = root.join(name).join("best");
        save(&path, &spec, &hash);
        // Loaded through the run folder (best/ is found).
        server.load_adapter(name, &root.join(name)).unwrap();
    }
    Fixture {
        server,
        _dir: dir,
        root,
        hash,
    }
}

fn config() -> ServeConfig {
    ServeConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(1),
        queue: 64,
        max_inputs: 8,
        max_body_bytes: 4096,
        admin_token: Some(TOKEN.into()),
        ..ServeConfig::default()
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text))
            .to_string()
    }
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
    token: Option<&str>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn predict(app: &Router, adapter: &str, body: &Value) -> Reply {
    send(
        app,
        "POST",
        &format!("/v1/adapters/{adapter}/predict"),
        body.to_string(),
        None,
    )
    .await
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_match_the_adapters() {
    let f = fixture(config());
    let app = f.server.router();
    let b = backbone();
    let all = specs();
    let spec = |n: &str| all.iter().find(|(k, _)| *k == n).unwrap().1.clone();

    // Classification: texts and a pair.
    let r = predict(
        &app,
        "cls",
        &json!({"inputs": ["the cat sat", ["a good movie", "very bad"], "dog"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["adapter"], "cls");
    let m = model(&spec("cls"), &b);
    let inputs = [
        ("the cat sat", None),
        ("a good movie", Some("very bad")),
        ("dog", None),
    ];
    for (i, (t, p)) in inputs.iter().enumerate() {
        let batch = Batch::pad(&[encode(&b, t, *p)], 0).unwrap();
        let want = softmax(&m.predict(&batch).unwrap());
        let out = &v["outputs"][i];
        let got = floats(&out["scores"]);
        assert!(max_diff(&got, &want) < 1e-5, "{got:?} vs {want:?}");
        let best = want
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(out["label"], ["neg", "neu", "pos"][best]);
    }

    // Regression: a value.
    let r = predict(&app, "reg", &json!({"inputs": ["we run", "they play"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let m = model(&spec("reg"), &b);
    for (i, t) in ["we run", "they play"].iter().enumerate() {
        let batch = Batch::pad(&[encode(&b, t, None)], 0).unwrap();
        let want = m.predict(&batch).unwrap()[0];
        let got = r.json()["outputs"][i]["value"].as_f64().unwrap() as f32;
        assert!((got - want).abs() < 1e-5);
    }

    // Multiple choice: a softmax over each input's choices.
    let r = predict(
        &app,
        "mc",
        &json!({"inputs": [["the cat sat", ["the dog", "sat"]], ["a", "b", "c"]]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let m = model(&spec("mc"), &b);
    let seqs = vec![
        encode(&b, "the cat sat", None),
        encode(&b, "the dog", Some("sat")),
    ];
    let logits = m.predict(&Batch::pad(&seqs, 0).unwrap()).unwrap();
    let want = softmax(&logits);
    assert!(max_diff(&floats(&v["outputs"][0]["scores"]), &want) < 1e-5);
    assert_eq!(v["outputs"][1]["scores"].as_array().unwrap().len(), 3);
    let choice = v["outputs"][0]["choice"].as_u64().unwrap() as usize;
    assert_eq!(choice, if logits[0] >= logits[1] { 0 } else { 1 }, "{v}");

    // Concurrent requests for different adapters share forward passes.
    let before = f.server.state.metrics.batches();
    let mut handles = Vec::new();
    for i in 0..24 {
        let app = app.clone();
        let name = ["cls", "cls2", "reg"][i % 3];
        handles.push(tokio::spawn(async move {
            predict(&app, name, &json!({"inputs": [TEXTS[i % TEXTS.len()]]})).await
        }));
    }
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let passes = f.server.state.metrics.batches() - before;
    assert!(passes <= 24, "{passes} forward passes for 24 requests");
}

/// NER and QA adapters answer exactly as the CLI path does: the same words,
/// windows, post-processing and spans, with long inputs windowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ner_and_qa_answers_match_the_cli_path() {
    let f = fixture(config());
    let app = f.server.router();
    let b = backbone();
    let all = specs();
    let spec = |n: &str| all.iter().find(|(k, _)| *k == n).unwrap().1.clone();
    let logits_alone = |m: &PromptModel, ids: &[u32], types: &[u32]| {
        let batch = Batch::pad(&[(ids.to_vec(), types.to_vec())], 0).unwrap();
        m.predict(&batch).unwrap()
    };

    // NER: a text longer than one window, a short one, an empty one.
    let texts = [
        format!("{LONG} Paris, (AP)"),
        "the cat sat".to_string(),
        String::new(),
    ];
    let r = predict(&app, "tok", &json!({"inputs": texts})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let m = model(&spec("tok"), &b);
    let labels: Vec<String> = spec("tok").labels.iter().map(|s| s.to_string()).collect();
    let mut entities_seen = 0;
    for (i, text) in texts.iter().enumerate() {
        let words = split_words(text);
        let sentence = TaggedSentence::unlabeled(&words);
        let feats = featurize_tagging(&b.tokenizer, &[sentence], &labels, MAX_LEN).unwrap();
        if i == 0 {
            assert!(feats.features.len() > 1, "the long text must be windowed");
        }
        let argmaxes: Vec<Vec<usize>> = feats
            .features
            .iter()
            .map(|f| {
                logits_alone(&m, &f.ids, &f.type_ids)
                    .chunks(labels.len())
                    .map(argmax)
                    .collect()
            })
            .collect();
        let tags: Vec<String> = word_predictions(&feats.features, &argmaxes, &[words.len()])[0]
            .iter()
            .map(|&t| labels[t].clone())
            .collect();
        let out = &v["outputs"][i];
        assert_eq!(out["tags"], json!(tags), "input {i}");
        assert_eq!(out["words"].as_array().unwrap().len(), words.len());
        let want: Vec<Value> = entity_spans(&words, &tags, text)
            .into_iter()
            .map(|e| json!({"label": e.label, "start": e.start, "end": e.end, "text": e.text}))
            .collect();
        assert_eq!(out["entities"], json!(want), "input {i}");
        for e in &want {
            let (s, t) = (
                e["start"].as_u64().unwrap() as usize,
                e["end"].as_u64().unwrap() as usize,
            );
            let chars: String = text.chars().skip(s).take(t - s).collect();
            assert_eq!(e["text"], chars);
            entities_seen += 1;
        }
    }
    assert!(
        entities_seen > 0,
        "the test adapter should find some entity"
    );

    // QA: a context over several windows; object and pair forms agree.
    let context = format!("{LONG}. Paris is big.");
    let question = "who sat on the mat?";
    let mut outs = Vec::new();
    for input in [
        json!({"question": question, "context": context}),
        json!([question, context]),
    ] {
        let r = predict(&app, "qa", &json!({"inputs": [input]})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        outs.push(r.json()["outputs"][0].clone());
    }
    let m = model(&spec("qa"), &b);
    let examples = vec![SquadExample {
        id: "0".into(),
        question: question.into(),
        context: context.clone(),
        answers: vec![],
        is_impossible: false,
    }];
    let feats = qa_features_vec(&b.tokenizer, &examples, MAX_LEN, QA_STRIDE).unwrap();
    assert!(feats.len() > 2, "{} windows", feats.len());
    let mut post = Postprocessor::new(&examples, PostprocessOptions::default());
    for f in &feats {
        let l = logits_alone(&m, &f.ids, &f.type_ids);
        let start: Vec<f32> = l.iter().step_by(2).copied().collect();
        let end: Vec<f32> = l.iter().skip(1).step_by(2).copied().collect();
        post.push_feature(f, &start, &end).unwrap();
    }
    let want = post.finish_spans().remove("0").unwrap();
    assert!(!want.text.is_empty());
    for out in &outs {
        assert_eq!(out["answer"], want.text, "{out}");
        assert_eq!(out["start"], want.start);
        assert_eq!(out["end"], want.end);
        assert!((out["score"].as_f64().unwrap() as f32 - want.score).abs() < 1e-4);
        let chars: String = context
            .chars()
            .skip(want.start)
            .take(want.end - want.start)
            .collect();
        assert_eq!(chars, want.text);
    }
    // A context in one window.
    let r = predict(&app, "qa", &json!({"inputs": [["why?", "because"]]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json()["outputs"][0]["answer"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_clear_4xx() {
    let f = fixture(config());
    let app = f.server.router();
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        ("POST", "/v1/adapters/cls/predict", "{not json".into(), StatusCode::BAD_REQUEST, "invalid JSON"),
        ("POST", "/v1/adapters/cls/predict", "".into(), StatusCode::BAD_REQUEST, "invalid JSON"),
        ("POST", "/v1/adapters/cls/predict", "[1,2]".into(), StatusCode::BAD_REQUEST, "expected a JSON object"),
        ("POST", "/v1/adapters/nope/predict", r#"{"inputs":["a"]}"#.into(), StatusCode::NOT_FOUND, "unknown adapter \"nope\""),
        ("POST", "/v1/adapters/cls/predict", r#"{"inputs":[]}"#.into(), StatusCode::BAD_REQUEST, "empty inputs"),
        ("POST", "/v1/adapters/cls/predict", r#"{}"#.into(), StatusCode::BAD_REQUEST, "\"inputs\" is required"),
        ("POST", "/v1/adapters/cls/predict", r#"{"inputs":"a"}"#.into(), StatusCode::BAD_REQUEST, "must be an array"),
        ("POST", "/v1/adapters/cls/predict", r#"{"inputs":["a"],"input":1}"#.into(), StatusCode::BAD_REQUEST, "unknown field \"input\""),
        ("POST", "/v1/adapters/cls/predict", r#"{"inputs":["a"],"truncate":"yes"}"#.into(), StatusCode::BAD_REQUEST, "\"truncate\" must be true or false"),
        ("POST", "/v1/adapters/cls/predict", r#"{"inputs":["a",5]}"#.into(), StatusCode::BAD_REQUEST, "inputs[1] must be a text or a pair"),
        ("POST", "/v1/adapters/cls/predict", r#"{"inputs":[["a","b","c"]]}"#.into(), StatusCode::BAD_REQUEST, "inputs[0] must be a text or a pair"),
        ("POST", "/v1/adapters/mc/predict", r#"{"inputs":["a"]}"#.into(), StatusCode::BAD_REQUEST, "non-empty array of choices"),
        ("POST", "/v1/adapters/mc/predict", r#"{"inputs":[["a","b","c","d","e"],["a","b","c","d"]]}"#.into(), StatusCode::BAD_REQUEST, "too many inputs: 9 choices"),
        (
            "POST",
            "/v1/adapters/cls/predict",
            json!({"inputs": vec!["a"; 9]}).to_string(),
            StatusCode::BAD_REQUEST,
            "too many inputs: 9 in one request, the limit is 8",
        ),
        (
            "POST",
            "/v1/adapters/cls/predict",
            json!({"inputs": [format!("{}!", "x ".repeat(3000))]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit",
        ),
        (
            "POST",
            "/v1/adapters/cls/predict",
            json!({"inputs": ["ok", LONG]}).to_string(),
            StatusCode::BAD_REQUEST,
            "inputs[1] is too long: 33 tokens (special tokens included), the adapter's maximum is 24",
        ),
        ("POST", "/v1/adapters/tok/predict", r#"{"inputs":[["a","b"]]}"#.into(), StatusCode::BAD_REQUEST, "inputs[0] must be a text for a token-classification adapter"),
        ("POST", "/v1/adapters/tok/predict", json!({"inputs": vec![LONG; 5]}).to_string(), StatusCode::BAD_REQUEST, "too many inputs: 10 windows in all"),
        ("POST", "/v1/adapters/qa/predict", r#"{"inputs":["a"]}"#.into(), StatusCode::BAD_REQUEST, "inputs[0] must be {\"question\": ..., \"context\": ...}"),
        ("POST", "/v1/adapters/qa/predict", r#"{"inputs":[{"question":"a"}]}"#.into(), StatusCode::BAD_REQUEST, "inputs[0] has no \"context\""),
        ("POST", "/v1/adapters/qa/predict", r#"{"inputs":[{"question":"a","context":"b","id":1}]}"#.into(), StatusCode::BAD_REQUEST, "inputs[0]: unknown field \"id\""),
        ("POST", "/v1/adapters/qa/predict", r#"{"inputs":[{"question":1,"context":"b"}]}"#.into(), StatusCode::BAD_REQUEST, "inputs[0].question must be a text"),
        ("POST", "/v1/adapters/qa/predict", json!({"inputs": [[LONG, "the cat"]]}).to_string(), StatusCode::BAD_REQUEST, "inputs[0] cannot be windowed"),
        ("GET", "/v1/adapters/cls/predict", "".into(), StatusCode::METHOD_NOT_ALLOWED, "GET is not allowed on /v1/adapters/cls/predict; allowed: POST"),
        ("POST", "/healthz", "".into(), StatusCode::METHOD_NOT_ALLOWED, "POST is not allowed on /healthz; allowed: GET, HEAD"),
        ("GET", "/nowhere", "".into(), StatusCode::NOT_FOUND, "no such route"),
    ];
    for (method, uri, body, status, needle) in cases {
        let r = send(&app, method, uri, body.clone(), None).await;
        assert_eq!(r.status, status, "{method} {uri} {body:.80}: {}", r.text);
        let e = r.error();
        assert!(
            e.contains(needle),
            "{uri} {body:.80}: {e:?} lacks {needle:?}"
        );
    }
    // The same long input passes with truncate.
    let r = predict(&app, "cls", &json!({"inputs": [LONG], "truncate": true})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The server still answers after all that.
    let r = predict(&app, "cls", &json!({"inputs": ["dog"]})).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_admin_load_unload() {
    let f = fixture(config());
    let app = f.server.router();
    let r = send(&app, "GET", "/v1/adapters", "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["backbone"]["weights_hash"], f.hash.as_str());
    let names: Vec<&str> = v["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cls", "cls2", "mc", "qa", "reg", "tok"]);
    let cls = &v["adapters"][0];
    assert_eq!(cls["labels"], json!(["neg", "neu", "pos"]));
    assert_eq!(cls["prefix_len"], 4);
    assert_eq!(cls["method"], "p-tuning-v2");
    assert_eq!(cls["task"], "custom/classification");
    assert_eq!(cls["head"], "classification");
    assert_eq!(cls["max_len"], MAX_LEN);
    assert_eq!(v["adapters"][1]["prefix_layers"], json!([2]));

    let extra = f.root.join("extra");
    save(&extra, &Spec::classes(6, vec!["u", "v"], 21), &f.hash);
    let body = json!({"name": "extra", "path": extra}).to_string();
    // No token, bad token.
    let r = send(&app, "POST", "/v1/adapters", body.clone(), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    let r = send(&app, "POST", "/v1/adapters", body.clone(), Some("wrong")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error(), "bad admin token");
    let r = send(&app, "DELETE", "/v1/adapters/cls", "", Some("s3cret-tokeN")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Load, use, conflict, unload.
    let r = send(&app, "POST", "/v1/adapters", body.clone(), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["loaded"]["prefix_len"], 6);
    let r = predict(&app, "extra", &json!({"inputs": ["the dog"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(&app, "POST", "/v1/adapters", body.clone(), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = send(&app, "DELETE", "/v1/adapters/extra", "", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["unloaded"], "extra");
    let r = predict(&app, "extra", &json!({"inputs": ["the dog"]})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(&app, "DELETE", "/v1/adapters/extra", "", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bad loads: a name, a path, another backbone's adapter, a bad body.
    let bad = [
        (
            json!({"name": "a b", "path": extra}).to_string(),
            "must be 1 to 64 characters",
        ),
        (
            json!({"name": "x", "path": f.root.join("missing")}).to_string(),
            "not a checkpoint folder",
        ),
        (json!({"name": "x"}).to_string(), "\"path\" is required"),
        (
            json!({"name": "x", "path": 3}).to_string(),
            "\"path\" must be a string",
        ),
        ("nope".to_string(), "invalid JSON"),
    ];
    for (body, needle) in bad {
        let r = send(&app, "POST", "/v1/adapters", body.clone(), Some(TOKEN)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.error().contains(needle), "{body}: {}", r.text);
    }
    let other = f.root.join("other");
    save(
        &other,
        &Spec::classes(4, vec!["u", "v"], 22),
        "00000000deadbeef",
    );
    let r = send(
        &app,
        "POST",
        "/v1/adapters",
        json!({"name": "other", "path": other}).to_string(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let e = r.error();
    assert!(
        e.contains("weights hash 00000000deadbeef") && e.contains(&f.hash),
        "{e}"
    );
    // The same refusal at start-up (load_adapter).
    let err = f
        .server
        .load_adapter("other", &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("weights hash"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disabled_without_a_token() {
    let f = fixture(ServeConfig {
        admin_token: None,
        ..config()
    });
    let app = f.server.router();
    let r = send(&app, "DELETE", "/v1/adapters/cls", "", Some("anything")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().contains("--admin-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi() {
    let f = fixture(config());
    let app = f.server.router();
    let r = send(&app, "GET", "/healthz", "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["adapters"], 6);

    predict(&app, "cls", &json!({"inputs": ["a", "b"]})).await;
    predict(&app, "cls", &json!({"inputs": []})).await;
    predict(&app, "ghost", &json!({"inputs": ["a"]})).await;
    let r = send(&app, "GET", "/metrics", "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let t = &r.text;
    for needle in [
        "ptuning_requests_total{adapter=\"cls\",status=\"200\"} 1\n",
        "ptuning_requests_total{adapter=\"cls\",status=\"400\"} 1\n",
        "ptuning_requests_total{adapter=\"_unknown\",status=\"404\"} 1\n",
        "# TYPE ptuning_request_duration_seconds histogram\n",
        "ptuning_request_duration_seconds_bucket{adapter=\"cls\",le=\"+Inf\"} 2\n",
        "ptuning_request_duration_seconds_count{adapter=\"cls\"} 2\n",
        "# TYPE ptuning_batch_size histogram\n",
        "ptuning_batch_size_bucket{le=\"2\"} 1\n",
        "ptuning_batch_size_count 1\n",
        "# TYPE ptuning_queue_depth gauge\nptuning_queue_depth 0\n",
        "ptuning_queue_capacity 64\n",
        "ptuning_adapters_loaded 6\n",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
    // Every sample line is `name{labels} value` with a number.
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    let r = send(&app, "GET", "/openapi.json", "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let spec = r.json();
    assert_eq!(spec, openapi::spec());
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/adapters/{name}/predict",
        "/v1/adapters",
        "/v1/adapters/{name}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(spec["paths"][path].is_object(), "{path}");
    }
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap().to_string());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&spec, &mut all);
    for r in all {
        let ptr = r.trim_start_matches('#');
        assert!(spec.pointer(ptr).is_some(), "dangling {r}");
    }
    // docs/openapi.json is this document.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let text = std::fs::read_to_string(&docs).unwrap();
    let on_disk: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        on_disk, spec,
        "docs/openapi.json is stale: regenerate it with `cargo test --release --test serve -- --ignored write_openapi_doc`"
    );
}

/// Regenerates docs/openapi.json from the code.
#[test]
#[ignore]
fn write_openapi_doc() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
    let mut text = serde_json::to_string_pretty(&openapi::spec()).unwrap();
    text.push('\n');
    std::fs::write(docs, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_and_recovers() {
    let f = fixture(ServeConfig {
        queue: 1,
        ..config()
    });
    let app = f.server.router();
    let metrics = Arc::clone(&f.server.state.metrics);
    // Held before its first forward pass, the worker takes one request and the
    // queue holds one more: of 6 requests, 1 or 2 are accepted (1 when two
    // arrive before the worker takes the first), the rest refused at once.
    let pause = f.server.pause();
    let mut handles = Vec::new();
    for i in 0..6 {
        let app2 = app.clone();
        handles.push(tokio::spawn(async move {
            predict(&app2, "cls", &json!({"inputs": [TEXTS[i % 7]]})).await
        }));
    }
    // Wait until every refusal has been answered: only the accepted remain.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = handles.iter().filter(|h| h.is_finished()).count();
        if done >= 4 && metrics.in_flight() + done == 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests never settled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        handles.iter().filter(|h| h.is_finished()).count() <= 5,
        "accepted requests must wait for the paused worker"
    );
    drop(pause);
    let (mut ok, mut refused) = (0, 0);
    for h in handles {
        let r = h.await.unwrap();
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(r.headers[header::RETRY_AFTER], "1");
                assert!(r.error().contains("queue is full"), "{}", r.text);
            }
            s => panic!("{s}: {}", r.text),
        }
    }
    assert!(
        (1..=2).contains(&ok) && ok + refused == 6,
        "{ok} ok, {refused} refused"
    );
    let r = send(&app, "GET", "/metrics", "", None).await;
    assert!(r.text.contains(&format!(
        "ptuning_requests_total{{adapter=\"cls\",status=\"503\"}} {refused}\n"
    )));
    assert!(r.text.contains("ptuning_requests_in_flight 0\n"));
    let r = predict(&app, "cls", &json!({"inputs": ["ok"]})).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Random and mutated bodies, URIs and methods: never a panic, never a 5xx
/// but 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_never_crashes() {
    let f = fixture(ServeConfig {
        max_wait: Duration::ZERO,
        queue: 4096,
        ..config()
    });
    let app = f.server.router();
    let mut rng = Rng::new(0x5eed);
    let seeds: Vec<String> = vec![
        r#"{"inputs":["the cat sat"]}"#.into(),
        r#"{"inputs":[["a good movie","very bad"],"dog"],"truncate":true}"#.into(),
        r#"{"inputs":[["a","b"],["c","d","e"]]}"#.into(),
        r#"{"inputs":["x"],"truncate":false}"#.into(),
        r#"{"inputs":[{"question":"who sat?","context":"the cat sat on the mat."}]}"#.into(),
        r#"{"inputs":[["who?","the cat sat"],{"question":"","context":""}]}"#.into(),
        r#"{"name":"n","path":"/tmp"}"#.into(),
    ];
    let words = [
        "the",
        "cat",
        "ü",
        "\u{0}",
        "\u{202e}",
        "𝔘𝔫𝔦",
        "[CLS]",
        "[SEP]",
        "##ing",
        "  ",
        "\\n",
        "\"",
        "漢字",
        "🙂",
        "",
        "[PAD]",
        "a.b,c!",
        "\t",
    ];
    let mut statuses = std::collections::BTreeMap::new();
    let mut handles = Vec::new();
    for i in 0..3000u64 {
        let body: Vec<u8> = match rng.below(6) {
            0 if rng.below(10) == 0 => {
                // Over the body limit.
                let mut b = br#"{"inputs":[""#.to_vec();
                b.resize(4097 + rng.below(2000), b'a');
                b
            }
            0 => {
                // Random bytes.
                let n = rng.below(64);
                (0..n).map(|_| rng.below(256) as u8).collect()
            }
            1 | 2 => {
                // A seed with byte mutations.
                let mut b = seeds[rng.below(seeds.len())].as_bytes().to_vec();
                for _ in 0..1 + rng.below(4) {
                    if b.is_empty() {
                        break;
                    }
                    let at = rng.below(b.len());
                    match rng.below(4) {
                        0 => b[at] = rng.below(256) as u8,
                        1 => {
                            b.remove(at);
                        }
                        2 => b.insert(at, b"[]{}\",:0-e"[rng.below(10)]),
                        _ => b.truncate(at),
                    }
                }
                b
            }
            _ => {
                // Structurally random JSON.
                fn value(rng: &mut Rng, words: &[&str], depth: usize) -> Value {
                    match rng.below(if depth > 3 { 5 } else { 8 }) {
                        0 => Value::Null,
                        1 => json!(rng.below(3) == 0),
                        2 => json!(rng.below(1000) as f64 - 500.0),
                        3 | 4 => {
                            let n = rng.below(12);
                            Value::String(
                                (0..n)
                                    .map(|_| words[rng.below(words.len())])
                                    .collect::<Vec<_>>()
                                    .join(" "),
                            )
                        }
                        5 | 6 => Value::Array(
                            (0..rng.below(5))
                                .map(|_| value(rng, words, depth + 1))
                                .collect(),
                        ),
                        _ => {
                            let mut m = serde_json::Map::new();
                            for _ in 0..rng.below(3) {
                                let k = [
                                    "inputs", "truncate", "name", "path", "x", "question",
                                    "context",
                                ][rng.below(7)];
                                m.insert(k.into(), value(rng, words, depth + 1));
                            }
                            Value::Object(m)
                        }
                    }
                }
                let mut m = serde_json::Map::new();
                if rng.below(8) != 0 {
                    let n = rng.below(10);
                    let inputs: Vec<Value> = (0..n)
                        .map(|_| {
                            if rng.below(3) == 0 {
                                value(&mut rng, &words, 1)
                            } else {
                                let n = rng.below(30);
                                Value::String(
                                    (0..n)
                                        .map(|_| words[rng.below(words.len())])
                                        .collect::<Vec<_>>()
                                        .join(" "),
                                )
                            }
                        })
                        .collect();
                    m.insert("inputs".into(), Value::Array(inputs));
                }
                if rng.below(3) == 0 {
                    m.insert("truncate".into(), value(&mut rng, &words, 2));
                }
                if rng.below(10) == 0 {
                    m.insert("extra".into(), value(&mut rng, &words, 2));
                }
                Value::Object(m).to_string().into_bytes()
            }
        };
        let (method, uri, token) = match rng.below(20) {
            0 => (
                "POST",
                "/v1/adapters".to_string(),
                Some(if rng.below(2) == 0 { TOKEN } else { "x" }),
            ),
            1 => (
                "DELETE",
                format!("/v1/adapters/ghost{}", rng.below(3)),
                Some(TOKEN),
            ),
            2 => ("GET", "/v1/adapters".to_string(), None),
            3 => ("PUT", "/v1/adapters/cls/predict".to_string(), None),
            4 => (
                "POST",
                format!("/v1/adapters/%{:02X}%ZZ/predict", rng.below(256)),
                None,
            ),
            5 => ("POST", "/v1/adapters//predict".to_string(), None),
            _ => {
                let name = ["cls", "cls2", "reg", "mc", "tok", "qa", "nope"][rng.below(7)];
                ("POST", format!("/v1/adapters/{name}/predict"), None)
            }
        };
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            let r = send(&app, method, &uri, body.clone(), token).await;
            (r, uri, body)
        }));
        if handles.len() == 32 || i == 2999 {
            for h in handles.drain(..) {
                let (r, uri, body) = h.await.expect("a request panicked");
                let s = r.status.as_u16();
                assert!(
                    (200..300).contains(&s) || (400..500).contains(&s) || s == 503,
                    "{s} for {uri} {:?}: {}",
                    String::from_utf8_lossy(&body),
                    r.text
                );
                if s >= 400 {
                    // Errors are JSON with a message.
                    assert!(!r.error().is_empty());
                }
                *statuses.entry(s).or_insert(0) += 1;
            }
        }
    }
    eprintln!("fuzz statuses: {statuses:?}");
    // The fuzz reached the model as well as the error paths.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 500,
        "{statuses:?}"
    );
    let r = predict(&app, "cls", &json!({"inputs": ["still fine"]})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&app, "GET", "/v1/adapters", "", None).await;
    assert_eq!(r.json()["adapters"].as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_a_405_naming_the_allowed_ones() {
    let f = fixture(config());
    let app = f.server.router();
    for (method, uri, allow) in [
        ("GET", "/v1/adapters/cls/predict", "POST"),
        ("POST", "/healthz", "GET,HEAD"),
        ("PUT", "/v1/adapters", "GET,HEAD,POST"),
        ("GET", "/v1/adapters/cls", "DELETE"),
    ] {
        let r = send(&app, method, uri, "", None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_eq!(r.headers[header::ALLOW], allow, "{method} {uri}");
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        let listed = allow.replace(',', ", ");
        assert_eq!(
            r.error(),
            format!("{method} is not allowed on {uri}; allowed: {listed}")
        );
    }
}

/// A raw HTTP/1.1 request over loopback (blocking std socket on a blocking
/// thread); (status, body).
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Sends `bytes` on a fresh connection and reads until the server closes it
/// (blocking std socket on a blocking thread); what came back and how long
/// it took from before the connect.
async fn exchange(addr: std::net::SocketAddr, bytes: &'static str) -> (String, Duration) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let started = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bytes.as_bytes()).unwrap();
        (read_until_closed(&mut s), started.elapsed())
    })
    .await
    .unwrap()
}

/// Everything the server sends until it closes the connection (a reset
/// counts as closed); panics after the socket's read timeout.
fn read_until_closed(s: &mut std::net::TcpStream) -> String {
    use std::io::{ErrorKind, Read};
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and JSON error of a raw response.
fn status_and_error(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no JSON error in {text:?}"));
    (status, error)
}

/// `server` on a loopback port: its address, the stop channel and the task.
struct Live {
    addr: std::net::SocketAddr,
    stop: tokio::sync::mpsc::UnboundedSender<()>,
    serving: tokio::task::JoinHandle<ptuning::Result<Stopped>>,
}

async fn live(server: &Arc<Server>) -> Live {
    let (stop, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let s = Arc::clone(server);
    let serving = tokio::spawn(async move {
        s.serve("127.0.0.1:0".parse().unwrap(), stop_rx, move |a| {
            addr_tx.send(a).unwrap()
        })
        .await
    });
    let addr = tokio::task::spawn_blocking(move || addr_rx.recv().unwrap())
        .await
        .unwrap();
    Live {
        addr,
        stop,
        serving,
    }
}

/// A client whose predict request stops halfway through its body: returns
/// once the server reads that body (it asked for it with `Expect:
/// 100-continue`), with what the server sends after, until it closes.
async fn stalled_client(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<String> {
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel();
    let client = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(
            b"POST /v1/adapters/cls/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 100"), "{head:?}");
        s.write_all(br#"{"inputs""#).unwrap();
        stalled_tx.send(()).unwrap();
        read_until_closed(&mut s)
    });
    tokio::task::spawn_blocking(move || stalled_rx.recv().unwrap())
        .await
        .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out() {
    let f = fixture(ServeConfig {
        request_timeout: Duration::from_secs(1),
        ..config()
    });
    let server = Arc::new(f.server);
    let live = live(&server).await;
    let addr = live.addr;
    let (body, head, idle) = tokio::join!(
        // The head in, the body stops halfway: 408.
        exchange(
            addr,
            "POST /v1/adapters/cls/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\"",
        ),
        // The head stops halfway: closed, no answer (hyper reads heads).
        exchange(addr, "POST /v1/adapters/cls/predict HTTP/1.1\r\nHost: x\r\n"),
        // Nothing sent.
        exchange(addr, ""),
    );
    // Timers never fire early; the clock starts after the connect.
    for (text, took) in [&body, &head, &idle] {
        assert!(
            *took >= Duration::from_millis(900) && *took < Duration::from_secs(20),
            "{took:?}: {text:?}"
        );
    }
    let (status, error) = status_and_error(&body.0);
    assert_eq!(status, 408, "{}", body.0);
    assert!(error.contains("--request-timeout-secs"), "{error}");
    assert!(body.0.contains("connection: close\r\n"), "{}", body.0);
    assert_eq!(head.0, "");
    assert_eq!(idle.0, "");
    // Requests sent in time are answered as ever.
    let (status, body) = raw_request(
        addr,
        "POST",
        "/v1/adapters/cls/predict",
        r#"{"inputs":["a"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    live.stop.send(()).unwrap();
    assert_eq!(live.serving.await.unwrap().unwrap(), Stopped::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversized_body_is_refused_unread() {
    let f = fixture(config());
    let server = Arc::new(f.server);
    let live = live(&server).await;
    // Declared over the 4096-byte limit, and never sent: answered at once,
    // not after the 30 s request timeout.
    let (text, took) = exchange(
        live.addr,
        "POST /v1/adapters/cls/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n{\"in",
    )
    .await;
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (status, error) = status_and_error(&text);
    assert_eq!(status, 413, "{text}");
    assert!(
        error.contains("over the limit (--max-body-bytes)"),
        "{error}"
    );
    assert!(text.contains("connection: close\r\n"), "{text}");
    live.stop.send(()).unwrap();
    assert_eq!(live.serving.await.unwrap().unwrap(), Stopped::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_what_is_left_after_the_grace_period() {
    let f = fixture(ServeConfig {
        request_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(1),
        ..config()
    });
    let server = Arc::new(f.server);
    let live = live(&server).await;
    let client = stalled_client(live.addr).await;
    let stopping = std::time::Instant::now();
    live.stop.send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(20), live.serving)
        .await
        .expect("the server stops after the grace period")
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Stopped::GraceOver { open: 1 });
    let took = stopping.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // Closed without an answer.
    assert_eq!(client.await.unwrap(), "");
    assert!(std::net::TcpStream::connect(live.addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_stop_closes_at_once() {
    let f = fixture(ServeConfig {
        request_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(60),
        ..config()
    });
    let server = Arc::new(f.server);
    let live = live(&server).await;
    let client = stalled_client(live.addr).await;
    live.stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !live.serving.is_finished(),
        "the server waits for the request"
    );
    live.stop.send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), live.serving)
        .await
        .expect("a second stop stops at once")
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Stopped::Forced { open: 1 });
    assert_eq!(client.await.unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_accepted_requests() {
    let f = fixture(config());
    let server = Arc::new(f.server);
    let Live {
        addr,
        stop,
        serving,
    } = live(&server).await;
    let (status, body) = raw_request(addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200, "{body}");

    // A request accepted while the model is held, then the stop signal.
    let pause = server.pause();
    let inflight = tokio::spawn(async move {
        raw_request(
            addr,
            "POST",
            "/v1/adapters/cls/predict",
            r#"{"inputs":["the cat"]}"#,
        )
        .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.state.metrics.in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !serving.is_finished(),
        "the server must wait for the request"
    );
    drop(pause);
    let (status, body) = inflight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    let stopped = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Stopped::Drained);
    // Stopped: no new connections, the worker refuses work.
    assert!(std::net::TcpStream::connect(addr).is_err());
    assert!(server.state.batcher.is_closed());
}
