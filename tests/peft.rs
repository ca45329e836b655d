//! PEFT interchange: export → import round trips, the refusals, and the
//! logits PEFT itself computes for an exported adapter (fixture written by
//! tools/peft_check.py).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use ptuning::model::batch::Batch;
use ptuning::model::heads::{ClassificationHead, HeadKind};
use ptuning::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
use ptuning::model::prompt_model::PromptModel;
use ptuning::model::weights::{save_tensors, WeightFile};
use ptuning::rng::Rng;
use ptuning::serve::batcher::{forward_mixed, Row};
use ptuning::serve::registry::ServedAdapter;
use ptuning::training::adapter::Adapter;
use ptuning::training::checkpoint::{
    created_by, load_checkpoint, save_checkpoint, BackboneInfo, CheckpointRef, PrefixInfo, RunInfo,
    TokenizerInfo, ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT_VERSION, RUN_INFO,
};
use ptuning::training::peft::{export_peft, import_peft, ImportOptions};
use ptuning::training::trainer::Backbone;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_dir() -> PathBuf {
    root().join("tests/fixtures/tiny-bert")
}

fn tiny() -> String {
    tiny_dir().display().to_string()
}

fn backbone() -> Backbone {
    Backbone::load(&tiny()).unwrap()
}

/// A checkpoint on tiny-bert with O(1) values: P = 4, 3 labels. P-Tuning v2:
/// a reparameterized prefix (so export has to fold it) on `layers`; prompt
/// tuning (`layers` empty): a plain [P, H] table of input embeddings.
fn checkpoint(
    dir: &Path,
    method: PromptMethod,
    layers: Vec<usize>,
    seed: u64,
    hash: &str,
    name_or_path: &str,
) {
    let config = PrefixConfig {
        method,
        len: 4,
        projection: method == PromptMethod::PTuningV2,
        hidden_size: 16,
        layers,
    };
    let mut prefix = PrefixEncoder::new(config.clone(), 32, 3, seed).unwrap();
    let mut rng = Rng::new(seed + 7);
    for p in prefix.params_mut() {
        rng.fill_normal(&mut p.value, 0.6);
    }
    let mut head = ClassificationHead::new(32, 3, seed + 1);
    rng.fill_normal(&mut head.weight.value, 0.5);
    rng.fill_normal(&mut head.bias.value, 0.1);
    let info = RunInfo {
        format_version: FORMAT_VERSION,
        task: "custom/classification".into(),
        head: HeadKind::Classification,
        label_names: vec!["neg".into(), "neu".into(), "pos".into()],
        backbone: BackboneInfo {
            name_or_path: name_or_path.into(),
            model_type: "bert".into(),
            hidden_size: 32,
            num_layers: 3,
            num_heads: 4,
            weights_hash: hash.into(),
        },
        tokenizer: TokenizerInfo {
            max_seq_len: 32,
            truncation: "longest_first".into(),
        },
        prefix: PrefixInfo::from(&config),
        hyperparameters: json!({"task": "custom/classification", "model": name_or_path}),
        created_by: created_by(),
    };
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

fn prompt_model(dir: &Path, b: &Backbone) -> PromptModel {
    let ckpt = load_checkpoint(dir).unwrap();
    PromptModel {
        backbone: Arc::clone(&b.model),
        prefix: ckpt.prefix,
        head: ckpt.head,
        gpu: None,
    }
}

fn sample_batch(b: &Backbone) -> Batch {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = [
        ("the cat sat on the mat", None),
        ("a good movie", Some("not very bad")),
        ("dog", None),
    ]
    .iter()
    .map(|(t, p)| {
        let e = b.tokenizer.encode(t, *p, 32).unwrap();
        (e.ids, e.type_ids)
    })
    .collect();
    Batch::pad(&seqs, b.tokenizer.pad_id()).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn options(labels: &[&str]) -> ImportOptions {
    ImportOptions {
        model: Some(tiny()),
        task: Some("custom/classification".into()),
        labels: Some(labels.iter().map(|s| s.to_string()).collect()),
        max_seq_len: Some(32),
    }
}

#[test]
fn export_then_import_gives_identical_logits() {
    let b = backbone();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    checkpoint(
        &run.join("best"),
        PromptMethod::PTuningV2,
        vec![0, 1, 2],
        1,
        &b.hash,
        &tiny(),
    );
    let peft = tmp.path().join("peft");
    let read = export_peft(&run, &peft).unwrap();
    assert_eq!(read, run.join("best"));

    let c = read_json(&peft.join(ADAPTER_CONFIG));
    for (k, v) in [
        ("peft_type", json!("PREFIX_TUNING")),
        ("task_type", json!("SEQ_CLS")),
        ("num_virtual_tokens", json!(4)),
        ("token_dim", json!(32)),
        ("num_layers", json!(3)),
        ("num_attention_heads", json!(4)),
        ("num_transformer_submodules", json!(1)),
        ("encoder_hidden_size", json!(16)),
        ("prefix_projection", json!(false)),
        ("base_model_name_or_path", json!(tiny())),
    ] {
        assert_eq!(c[k], v, "{k}");
    }
    let w = WeightFile::open(&peft.join(ADAPTER_WEIGHTS)).unwrap();
    let mut names = w.names();
    names.sort();
    assert_eq!(
        names,
        [
            "base_model.classifier.bias",
            "base_model.classifier.weight",
            "prompt_embeddings"
        ]
    );
    assert_eq!(w.shape("prompt_embeddings").unwrap(), [4, 3 * 2 * 32]);
    assert!(!peft.join(RUN_INFO).exists(), "a plain PEFT folder");

    let imported = tmp.path().join("imported");
    let info = import_peft(&peft, &imported, &options(&["neg", "neu", "pos"])).unwrap();
    assert_eq!(info.backbone.weights_hash, b.hash);
    assert_eq!(info.prefix.layers, [0, 1, 2]);
    assert_eq!(info.head, HeadKind::Classification);

    let batch = sample_batch(&b);
    let want = prompt_model(&run.join("best"), &b).predict(&batch).unwrap();
    let got = prompt_model(&imported, &b).predict(&batch).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "round trip changed the logits");

    // The imported folder is a full checkpoint: eval/predict and serve load it.
    let adapter = Adapter::load(&imported, Some(&tiny())).unwrap();
    assert_eq!(adapter.info.label_names, ["neg", "neu", "pos"]);
    let served = ServedAdapter::load("imp", &imported, &b.model.config, &tiny(), &b.hash).unwrap();
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..batch.batch)
        .map(|r| {
            let row = &batch.input_ids[r * batch.seq..(r + 1) * batch.seq];
            let n = batch.attention_mask[r * batch.seq..(r + 1) * batch.seq]
                .iter()
                .filter(|&&m| m > 0.0)
                .count();
            (
                row[..n].to_vec(),
                batch.token_type_ids[r * batch.seq..r * batch.seq + n].to_vec(),
            )
        })
        .collect();
    let rows: Vec<Row<'_>> = seqs
        .iter()
        .map(|s| Row {
            adapter: &served,
            sequence: s,
        })
        .collect();
    let serve_logits: Vec<f32> = forward_mixed(&b.model, None, b.tokenizer.pad_id(), &rows, 8)
        .unwrap()
        .concat();
    let worst = serve_logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");

    // Exporting the imported checkpoint gives the same PEFT tensors back.
    let again = tmp.path().join("again");
    export_peft(&imported, &again).unwrap();
    let w2 = WeightFile::open(&again.join(ADAPTER_WEIGHTS)).unwrap();
    for name in [
        "prompt_embeddings",
        "base_model.classifier.weight",
        "base_model.classifier.bias",
    ] {
        assert_eq!(
            bits(&w.tensor_f32(name).unwrap().0),
            bits(&w2.tensor_f32(name).unwrap().0),
            "{name}"
        );
    }
}

#[test]
fn export_refuses_a_layer_subset() {
    let b = backbone();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("ckpt");
    checkpoint(
        &run,
        PromptMethod::PTuningV2,
        vec![1, 2],
        2,
        &b.hash,
        &tiny(),
    );
    let err = export_peft(&run, &tmp.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layers [1, 2] of the backbone's 3")
            && err.contains("PEFT's prefix tuning puts a prefix on every layer")
            && err.contains("--prefix-layers all"),
        "{err}"
    );
    assert!(!tmp.path().join("out").join(ADAPTER_WEIGHTS).exists());
    let err = export_peft(&tmp.path().join("nothing"), &tmp.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a checkpoint folder"), "{err}");
}

/// A PEFT folder with `config` and `tensors`.
fn peft_folder(dir: &Path, config: &Value, tensors: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(ADAPTER_CONFIG), config.to_string()).unwrap();
    let data: Vec<Vec<f32>> = tensors
        .iter()
        .map(|(_, s)| vec![0.1; s.iter().product()])
        .collect();
    let list: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| (n.to_string(), s.clone(), d.as_slice()))
        .collect();
    save_tensors(&dir.join(ADAPTER_WEIGHTS), &list).unwrap();
}

fn good_config() -> Value {
    json!({
        "peft_type": "PREFIX_TUNING",
        "task_type": "SEQ_CLS",
        "num_virtual_tokens": 5,
        "token_dim": 32,
        "num_layers": 3,
        "num_attention_heads": 4,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": 32,
        "prefix_projection": false,
        "base_model_name_or_path": tiny(),
    })
}

/// Tensor names and shapes of a PEFT folder.
type Tensors = Vec<(&'static str, Vec<usize>)>;

/// (case name, adapter_config.json, tensors, options, expected message).
type Case = (&'static str, Value, Tensors, ImportOptions, &'static str);

fn good_tensors() -> Tensors {
    vec![
        ("prompt_embeddings", vec![5, 192]),
        ("base_model.classifier.weight", vec![2, 32]),
        ("base_model.classifier.bias", vec![2]),
    ]
}

#[test]
fn import_refusals_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = good_config();
        edit(&mut c);
        c
    };
    let mut cases: Vec<Case> = vec![
        (
            "lora",
            with(&|c| c["peft_type"] = json!("LORA")),
            good_tensors(),
            options(&["a", "b"]),
            "peft_type is \"LORA\", not \"PREFIX_TUNING\"",
        ),
        (
            "no_tokens",
            with(&|c| {
                c.as_object_mut().unwrap().remove("num_virtual_tokens");
            }),
            good_tensors(),
            options(&["a", "b"]),
            "num_virtual_tokens is missing",
        ),
        (
            "seq2seq",
            with(&|c| c["num_transformer_submodules"] = json!(2)),
            good_tensors(),
            options(&["a", "b"]),
            "num_transformer_submodules is 2",
        ),
        (
            "too_long",
            good_config(),
            good_tensors(),
            ImportOptions {
                max_seq_len: Some(100),
                ..options(&["a", "b"])
            },
            "needs more than the model's 64 positions",
        ),
        (
            "dim",
            with(&|c| c["token_dim"] = json!(64)),
            good_tensors(),
            options(&["a", "b"]),
            "token_dim (hidden size) is 64 but backbone",
        ),
        (
            "layers",
            with(&|c| c["num_layers"] = json!(12)),
            good_tensors(),
            options(&["a", "b"]),
            "num_layers is 12 but backbone",
        ),
        (
            "heads",
            with(&|c| c["num_attention_heads"] = json!(8)),
            good_tensors(),
            options(&["a", "b"]),
            "num_attention_heads is 8",
        ),
        (
            "shape",
            good_config(),
            vec![
                ("prompt_embeddings", vec![5, 100]),
                ("base_model.classifier.weight", vec![2, 32]),
                ("base_model.classifier.bias", vec![2]),
            ],
            options(&["a", "b"]),
            "tensor \"prompt_embeddings\" has shape [5, 100], expected [5, 192]",
        ),
        (
            "projection_without_table",
            with(&|c| c["prefix_projection"] = json!(true)),
            vec![
                ("prompt_embeddings", vec![5, 32]),
                ("base_model.classifier.weight", vec![2, 32]),
                ("base_model.classifier.bias", vec![2]),
            ],
            options(&["a", "b"]),
            "prefix_projection is true and prompt_embeddings is [5, 32], not the folded table [5, 192]",
        ),
        (
            "no_table",
            good_config(),
            vec![
                ("base_model.classifier.weight", vec![2, 32]),
                ("base_model.classifier.bias", vec![2]),
            ],
            options(&["a", "b"]),
            "missing tensor \"prompt_embeddings\"",
        ),
        (
            "no_head",
            good_config(),
            vec![("prompt_embeddings", vec![5, 192])],
            options(&["a", "b"]),
            "no classifier head",
        ),
        (
            "head_shape",
            good_config(),
            vec![
                ("prompt_embeddings", vec![5, 192]),
                ("base_model.classifier.weight", vec![2, 16]),
                ("base_model.classifier.bias", vec![2]),
            ],
            options(&["a", "b"]),
            "\"base_model.classifier.weight\" has shape [2, 16], expected [2, 32]",
        ),
        (
            "labels",
            good_config(),
            good_tensors(),
            options(&["a", "b", "c"]),
            "the head has 2 outputs but task custom/classification with labels [\"a\", \"b\", \"c\"] needs 3",
        ),
        (
            "regression_needs_task",
            good_config(),
            vec![
                ("prompt_embeddings", vec![5, 192]),
                ("base_model.classifier.weight", vec![1, 32]),
                ("base_model.classifier.bias", vec![1]),
            ],
            ImportOptions {
                model: Some(tiny()),
                ..ImportOptions::default()
            },
            "pass --task",
        ),
        (
            // A prompt-tuning config with a deep prompt's [P, L·2·H] table.
            "prompt_tuning_deep_table",
            with(&|c| {
                c["peft_type"] = json!("PROMPT_TUNING");
                let o = c.as_object_mut().unwrap();
                o.remove("encoder_hidden_size");
                o.remove("prefix_projection");
            }),
            good_tensors(),
            options(&["a", "b"]),
            "tensor \"prompt_embeddings\" has shape [5, 192], expected [5, 32]",
        ),
    ];
    for (name, config, tensors, opts, needle) in cases.drain(..) {
        let dir = tmp.path().join(name);
        peft_folder(&dir, &config, &tensors);
        let out = tmp.path().join(format!("{name}-out"));
        let err = import_peft(&dir, &out, &opts)
            .err()
            .unwrap_or_else(|| panic!("{name}: imported"))
            .to_string();
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        assert!(!out.join(RUN_INFO).exists(), "{name}: wrote a checkpoint");
    }
    let err = import_peft(
        &tmp.path().join("absent"),
        &tmp.path().join("o"),
        &options(&["a"]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a PEFT adapter folder"), "{err}");

    // The checkpoint replaces --out whole, so a folder that holds anything
    // (here the source itself, beside the user's notes) is refused, intact.
    let parent = tmp.path().join("parent");
    peft_folder(&parent.join("peft"), &good_config(), &good_tensors());
    std::fs::write(parent.join("notes.md"), "mine").unwrap();
    let err = import_peft(&parent.join("peft"), &parent, &options(&["a", "b"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists and is not an empty folder"),
        "{err}"
    );
    assert!(parent.join("peft").join("adapter_config.json").exists());
    assert_eq!(
        std::fs::read_to_string(parent.join("notes.md")).unwrap(),
        "mine"
    );
    // Tagging and QA heads have no PEFT counterpart here; say so, once.
    let err = import_peft(
        &parent.join("peft"),
        &tmp.path().join("ner-out"),
        &ImportOptions {
            task: Some("ner/conll2003".into()),
            ..options(&["a", "b"])
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("import takes sequence-level adapters")
            && err.matches("invalid argument").count() == 1,
        "{err}"
    );

    // The good folder imports; a 1-output head with a regression task too,
    // and without labels a classifier gets index names.
    let dir = tmp.path().join("good");
    peft_folder(&dir, &good_config(), &good_tensors());
    let info = import_peft(
        &dir,
        &tmp.path().join("good-out"),
        &ImportOptions {
            model: Some(tiny()),
            ..ImportOptions::default()
        },
    )
    .unwrap();
    assert_eq!(info.label_names, ["0", "1"]);
    assert_eq!(info.task, "custom/classification");
    // 128 tokens by default, but tiny-bert's 64 positions leave 59 after 5.
    assert_eq!(info.tokenizer.max_seq_len, 59);
    let dir = tmp.path().join("reg");
    peft_folder(
        &dir,
        &good_config(),
        &[
            ("prompt_embeddings", vec![5, 192]),
            ("classifier.weight", vec![1, 32]),
            ("classifier.bias", vec![1]),
        ],
    );
    let info = import_peft(
        &dir,
        &tmp.path().join("reg-out"),
        &ImportOptions {
            model: Some(tiny()),
            task: Some("glue/stsb".into()),
            ..ImportOptions::default()
        },
    )
    .unwrap();
    assert_eq!(info.head, HeadKind::Regression);
    assert!(info.label_names.is_empty());
    Adapter::load(&tmp.path().join("reg-out"), Some(&tiny())).unwrap();
}

// ---------------------------------------------------------------------------
// Against PEFT itself: tests/fixtures/peft/ (prefix tuning) and
// tests/fixtures/peft_prompt_tuning/ (prompt tuning), tools/peft_check.py
// ---------------------------------------------------------------------------

/// The fixture's source checkpoint: deterministic, so that its export can be
/// compared with the committed adapter PEFT was run on.
fn fixture_source(dir: &Path) {
    let hash = ptuning::training::checkpoint::weights_hash(&tiny_dir()).unwrap();
    checkpoint(
        dir,
        PromptMethod::PTuningV2,
        vec![0, 1, 2],
        42,
        &hash,
        "tests/fixtures/tiny-bert",
    );
}

/// The prompt-tuning fixture's source: P = 4 input embeddings [4, 32] and
/// the head, random O(1) values from a fixed seed.
fn prompt_tuning_fixture_source(dir: &Path) {
    let hash = ptuning::training::checkpoint::weights_hash(&tiny_dir()).unwrap();
    checkpoint(
        dir,
        PromptMethod::PromptTuning,
        Vec::new(),
        43,
        &hash,
        "tests/fixtures/tiny-bert",
    );
}

fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/peft")
}

fn prompt_tuning_fixture_dir() -> PathBuf {
    root().join("tests/fixtures/peft_prompt_tuning")
}

/// Writes tests/fixtures/peft/adapter (then run tools/peft_check.py).
#[test]
#[ignore]
fn write_peft_fixture_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    fixture_source(&tmp.path().join("ckpt"));
    export_peft(&tmp.path().join("ckpt"), &fixture_dir().join("adapter")).unwrap();
}

/// Writes tests/fixtures/peft_prompt_tuning/adapter (then run
/// tools/peft_check.py --method prompt-tuning).
#[test]
#[ignore]
fn write_peft_prompt_tuning_fixture_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    prompt_tuning_fixture_source(&tmp.path().join("ckpt"));
    export_peft(
        &tmp.path().join("ckpt"),
        &prompt_tuning_fixture_dir().join("adapter"),
    )
    .unwrap();
}

/// Exports the checkpoint `source` writes and checks that it is the
/// committed adapter of fixture folder `dir`: config and tensors. Returns
/// the export's config.
fn assert_export_is_committed(source: fn(&Path), dir: &Path) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    source(&tmp.path().join("ckpt"));
    let out = tmp.path().join("peft");
    export_peft(&tmp.path().join("ckpt"), &out).unwrap();
    let committed = dir.join("adapter");
    let config = read_json(&out.join(ADAPTER_CONFIG));
    assert_eq!(config, read_json(&committed.join(ADAPTER_CONFIG)));
    let a = WeightFile::open(&out.join(ADAPTER_WEIGHTS)).unwrap();
    let b = WeightFile::open(&committed.join(ADAPTER_WEIGHTS)).unwrap();
    let mut names = a.names();
    names.sort();
    let mut names_b = b.names();
    names_b.sort();
    assert_eq!(names, names_b);
    // A folded MLP is matrix products, whose order of summation follows
    // the CPU's kernels (AVX-512 or AVX2): the last bits may differ from
    // the machine that wrote the fixture.
    for n in names {
        let ((got, got_shape), (want, want_shape)) =
            (a.tensor_f32(&n).unwrap(), b.tensor_f32(&n).unwrap());
        assert_eq!(got_shape, want_shape, "{n}");
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{n}[{i}]: {x} vs {y}"
            );
        }
    }
    config
}

#[test]
fn export_is_the_adapter_peft_was_checked_on() {
    assert_export_is_committed(fixture_source, &fixture_dir());
}

#[test]
fn prompt_tuning_export_is_the_adapter_peft_was_checked_on() {
    let dir = prompt_tuning_fixture_dir();
    let c = assert_export_is_committed(prompt_tuning_fixture_source, &dir);
    for (k, v) in [
        ("peft_type", json!("PROMPT_TUNING")),
        ("task_type", json!("SEQ_CLS")),
        ("num_virtual_tokens", json!(4)),
        ("token_dim", json!(32)),
        ("num_layers", json!(3)),
        ("num_transformer_submodules", json!(1)),
        ("modules_to_save", json!(["classifier"])),
        ("base_model_name_or_path", json!("tests/fixtures/tiny-bert")),
    ] {
        assert_eq!(c[k], v, "{k}");
    }
    for k in ["encoder_hidden_size", "prefix_projection"] {
        assert!(c.get(k).is_none(), "{k} in a PROMPT_TUNING config");
    }
    let w = WeightFile::open(&dir.join("adapter").join(ADAPTER_WEIGHTS)).unwrap();
    assert_eq!(w.shape("prompt_embeddings").unwrap(), [4, 32]);
    assert_eq!(w.shape("base_model.classifier.weight").unwrap(), [3, 32]);
}

/// Imports the committed adapter of fixture folder `dir` and checks that
/// our logits are the ones PEFT computed (`peft_logits.safetensors`), and
/// that our tokenizer gives PEFT's input ids. Returns the import's RunInfo.
fn assert_logits_match_peft(dir: &Path) -> RunInfo {
    let b = backbone();
    let tmp = tempfile::tempdir().unwrap();
    let imported = tmp.path().join("imported");
    let info = import_peft(
        &dir.join("adapter"),
        &imported,
        &options(&["neg", "neu", "pos"]),
    )
    .unwrap();
    let model = prompt_model(&imported, &b);

    let f = WeightFile::open(&dir.join("peft_logits.safetensors")).unwrap();
    let (ids, shape) = f.tensor_i64("input_ids").unwrap();
    let (types, _) = f.tensor_i64("token_type_ids").unwrap();
    let (mask, _) = f.tensor_i64("attention_mask").unwrap();
    let (want, logit_shape) = f.tensor_f32("logits").unwrap();
    let (bsz, seq) = (shape[0], shape[1]);
    assert_eq!(logit_shape, [bsz, 3]);
    let batch = Batch {
        batch: bsz,
        seq,
        input_ids: ids.iter().map(|&x| x as u32).collect(),
        token_type_ids: types.iter().map(|&x| x as u32).collect(),
        attention_mask: mask.iter().map(|&x| x as f32).collect(),
    };
    let got = model.predict(&batch).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!(
        "ptuning vs PEFT logits ({}): worst |diff| {worst:e} over {bsz}x3",
        info.prefix.method.name()
    );
    assert!(worst <= 1e-4, "worst {worst}\nours {got:?}\npeft {want:?}");
    // Our tokenizer gives PEFT's input ids too.
    let texts = read_json(&dir.join("inputs.json"));
    for (r, item) in texts.as_array().unwrap().iter().enumerate() {
        let t = item[0].as_str().unwrap();
        let p = item.get(1).and_then(Value::as_str);
        let e = b.tokenizer.encode(t, p, 64).unwrap();
        let n = mask[r * seq..(r + 1) * seq]
            .iter()
            .filter(|&&m| m == 1)
            .count();
        let row: Vec<u32> = batch.input_ids[r * seq..r * seq + n].to_vec();
        assert_eq!(e.ids, row, "row {r}: {t:?}");
    }
    info
}

#[test]
fn logits_match_peft() {
    let info = assert_logits_match_peft(&fixture_dir());
    assert_eq!(info.prefix.method, PromptMethod::PTuningV2);
}

#[test]
fn prompt_tuning_logits_match_peft() {
    let info = assert_logits_match_peft(&prompt_tuning_fixture_dir());
    assert_eq!(info.prefix.method, PromptMethod::PromptTuning);
    assert_eq!(info.prefix.method.name(), "prompt-tuning");
    assert!(info.prefix.layers.is_empty(), "{:?}", info.prefix.layers);
    assert!(!info.prefix.projection);
    assert_eq!(info.prefix.len, 4);
}
