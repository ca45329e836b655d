//! Loading model folders: config.json validation, safetensors reading (name
//! prefixes, dtypes, shapes), BertModel assembly (QKV fusion, optional
//! pooler, legacy LayerNorm names), the atomic writer, hub resolution and the
//! tokenizer. Every model folder is built in a temp dir; the real MiniLM is
//! only used when it is already in the ptuning cache.

use std::path::{Path, PathBuf};

use ptuning::model::bert::BertModel;
use ptuning::model::config::{BertConfig, ModelType};
use ptuning::model::hub::{resolve_model_in, HubPaths, DEFAULT_MODEL};
use ptuning::model::tokenizer::Tokenizer;
use ptuning::model::weights::{save_tensors, WeightFile};
use ptuning::Error;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

// ---------------------------------------------------------------- helpers

/// Tiny architecture: vocab 20, H 8, 2 heads, 2 layers, FFN 16, 16 positions.
const V: usize = 20;
const H: usize = 8;
const L: usize = 2;
const FF: usize = 16;
const P: usize = 16;
const T: usize = 2;

fn tiny_config_json(model_type: &str) -> String {
    format!(
        r#"{{
  "architectures": ["BertModel"],
  "model_type": "{model_type}",
  "vocab_size": {V},
  "hidden_size": {H},
  "num_hidden_layers": {L},
  "num_attention_heads": 2,
  "intermediate_size": {FF},
  "max_position_embeddings": {P},
  "type_vocab_size": {T},
  "hidden_act": "gelu",
  "layer_norm_eps": 1e-12
}}"#
    )
}

/// Deterministic pseudo-random values in [-1, 1), different per `seed`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; n];
    ptuning::rng::Rng::new(seed).fill_uniform(&mut v, 1.0);
    v
}

/// Every tensor of the tiny BertModel with its HF name (bare) and shape.
fn tiny_tensors(with_pooler: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut specs: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![V, H]),
        ("embeddings.position_embeddings.weight".into(), vec![P, H]),
        ("embeddings.token_type_embeddings.weight".into(), vec![T, H]),
        ("embeddings.LayerNorm.weight".into(), vec![H]),
        ("embeddings.LayerNorm.bias".into(), vec![H]),
    ];
    for i in 0..L {
        let p = format!("encoder.layer.{i}");
        for part in ["query", "key", "value"] {
            specs.push((format!("{p}.attention.self.{part}.weight"), vec![H, H]));
            specs.push((format!("{p}.attention.self.{part}.bias"), vec![H]));
        }
        specs.push((format!("{p}.attention.output.dense.weight"), vec![H, H]));
        specs.push((format!("{p}.attention.output.dense.bias"), vec![H]));
        specs.push((format!("{p}.attention.output.LayerNorm.weight"), vec![H]));
        specs.push((format!("{p}.attention.output.LayerNorm.bias"), vec![H]));
        specs.push((format!("{p}.intermediate.dense.weight"), vec![FF, H]));
        specs.push((format!("{p}.intermediate.dense.bias"), vec![FF]));
        specs.push((format!("{p}.output.dense.weight"), vec![H, FF]));
        specs.push((format!("{p}.output.dense.bias"), vec![H]));
        specs.push((format!("{p}.output.LayerNorm.weight"), vec![H]));
        specs.push((format!("{p}.output.LayerNorm.bias"), vec![H]));
    }
    if with_pooler {
        specs.push(("pooler.dense.weight".into(), vec![H, H]));
        specs.push(("pooler.dense.bias".into(), vec![H]));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            (name, shape, values(n, i as u64 + 1))
        })
        .collect()
}

fn get<'a>(tensors: &'a [(String, Vec<usize>, Vec<f32>)], name: &str) -> &'a [f32] {
    &tensors.iter().find(|t| t.0 == name).unwrap().2
}

/// Writes config.json and model.safetensors (names with `prefix`) into `dir`.
fn write_model(dir: &Path, config: &str, tensors: &[(String, Vec<usize>, Vec<f32>)], prefix: &str) {
    std::fs::write(dir.join("config.json"), config).unwrap();
    let named: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (format!("{prefix}{n}"), s.clone(), d.as_slice()))
        .collect();
    save_tensors(&dir.join("model.safetensors"), &named).unwrap();
}

/// Writes a safetensors file with raw tensors of any dtype.
fn write_raw(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| {
            (
                n.to_string(),
                TensorView::new(*dt, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `json` as a config.json file, read.
fn read_config(json: &str) -> ptuning::error::Result<BertConfig> {
    let dir = tmp();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json).unwrap();
    BertConfig::from_file(&path)
}

/// A config with the required fields alone (the others default):
/// (vocab, hidden, layers, heads, intermediate, positions).
fn minimal_config(
    model_type: &str,
    sizes: (usize, usize, usize, usize, usize, usize),
) -> BertConfig {
    let (v, h, l, nh, i, p) = sizes;
    read_config(&format!(
        r#"{{"model_type": "{model_type}", "vocab_size": {v}, "hidden_size": {h},
            "num_hidden_layers": {l}, "num_attention_heads": {nh}, "intermediate_size": {i},
            "max_position_embeddings": {p}}}"#
    ))
    .unwrap()
}

fn config_err(json: &str) -> String {
    let err = read_config(json).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("config.json"),
        "error should name the file: {msg}"
    );
    msg
}

/// A tiny BERT WordPiece tokenizer.json: ids 0..=4 special, then words.
fn tiny_tokenizer_json() -> String {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
        "ran", "##s", "big",
    ];
    let vocab: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("\"{w}\": {i}"))
        .collect();
    let special: Vec<String> = words[..5]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                r#"{{"id": {i}, "content": "{w}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#
            )
        })
        .collect();
    format!(
        r###"{{
  "version": "1.0",
  "truncation": {{"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}},
  "padding": {{"strategy": {{"Fixed": 32}}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}},
  "added_tokens": [{special}],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true}},
  "pre_tokenizer": {{"type": "BertPreTokenizer"}},
  "post_processor": {{"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}},
  "decoder": {{"type": "WordPiece", "prefix": "##", "cleanup": true}},
  "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {{{vocab}}}}}
}}"###,
        special = special.join(", "),
        vocab = vocab.join(", ")
    )
}

// ---------------------------------------------------------------- config

#[test]
fn config_defaults_follow_transformers() {
    let c = minimal_config("roberta", (50, 8, 1, 2, 16, 20));
    assert_eq!(c.model_type, ModelType::Roberta);
    assert_eq!(c.pad_token_id, 1);
    assert_eq!(c.position_offset(), 2);
    assert_eq!(c.type_vocab_size, 2);
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(c.hidden_dropout_prob, 0.1);
    assert_eq!(c.attention_probs_dropout_prob, 0.1);
    assert_eq!(c.head_dim(), 4);

    let c = read_config(&tiny_config_json("bert")).unwrap();
    assert_eq!(
        (c.model_type, c.pad_token_id, c.position_offset()),
        (ModelType::Bert, 0, 0)
    );

    let c = read_config(&tiny_config_json("xlm-roberta")).unwrap();
    assert_eq!((c.model_type, c.pad_token_id), (ModelType::XlmRoberta, 1));
}

/// The matrix FLOPs of a forward, against bert-large worked by hand (batch
/// 32 × 128, prefix 20 on all 24 layers): 4096 tokens × 24 layers ×
/// 2·(4·1024² + 2·1024·4096) = 2.474e12 in the GEMMs, and 24 ×
/// 4·32·128·148·1024 = 5.96e10 in attention.
#[test]
fn forward_flop_counts_gemms_and_attention() {
    let c = minimal_config("bert", (30522, 1024, 24, 16, 4096, 512));
    let gemms = 4096.0 * 24.0 * 2.0 * (4.0 * 1024.0f64.powi(2) + 2.0 * 1024.0 * 4096.0);
    let all = c.forward_flop(32, 128, 20, 24);
    assert_eq!(all, gemms + 24.0 * 4.0 * 32.0 * 128.0 * 148.0 * 1024.0);
    assert!((all / 1e12 - 2.534).abs() < 1e-3, "{all}");
    // A prefix on 4 layers: the other 20 attend over the tokens alone.
    let top4 = c.forward_flop(32, 128, 20, 4);
    assert_eq!(top4, all - 20.0 * 4.0 * 32.0 * 128.0 * 20.0 * 1024.0);
}

#[test]
fn config_unknown_model_type_names_value() {
    let msg = config_err(&tiny_config_json("gpt2"));
    assert!(msg.contains("\"gpt2\""), "{msg}");
    assert!(msg.contains("bert, roberta, xlm-roberta"), "{msg}");
    let dir = tmp();
    let path = dir.path().join("config.json");
    std::fs::write(&path, tiny_config_json("gpt2")).unwrap();
    assert!(matches!(
        BertConfig::from_file(&path),
        Err(Error::UnknownModelType { found, .. }) if found == "gpt2"
    ));
}

#[test]
fn config_invalid_json_gives_line_and_column() {
    let msg = config_err("{\n  \"model_type\": \"bert\",\n  \"hidden_size\": ,\n}");
    assert!(msg.contains("invalid JSON"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("column"), "{msg}");
}

#[test]
fn config_missing_field_and_wrong_type_name_the_field() {
    let json = tiny_config_json("bert").replace(&format!("\"hidden_size\": {H},"), "");
    let msg = config_err(&json);
    assert!(
        msg.contains("missing required field \"hidden_size\""),
        "{msg}"
    );

    let json = tiny_config_json("bert").replace(
        &format!("\"num_hidden_layers\": {L}"),
        "\"num_hidden_layers\": \"two\"",
    );
    let msg = config_err(&json);
    assert!(msg.contains("\"num_hidden_layers\""), "{msg}");
    assert!(msg.contains("non-negative integer"), "{msg}");
    assert!(msg.contains("string"), "{msg}");

    let json = tiny_config_json("bert")
        .replace("\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": \"small\"");
    let msg = config_err(&json);
    assert!(
        msg.contains("\"layer_norm_eps\"") && msg.contains("a number"),
        "{msg}"
    );

    let msg = config_err(&tiny_config_json("bert").replace("\"model_type\": \"bert\",", ""));
    assert!(msg.contains("\"model_type\""), "{msg}");
}

#[test]
fn config_rejects_unsupported_math() {
    let msg = config_err(&tiny_config_json("bert").replace("\"gelu\"", "\"gelu_new\""));
    assert!(msg.contains("gelu_new") && msg.contains("erf"), "{msg}");

    let json = tiny_config_json("bert").replace(
        "\"hidden_act\": \"gelu\"",
        "\"hidden_act\": \"gelu\", \"position_embedding_type\": \"relative_key\"",
    );
    let msg = config_err(&json);
    assert!(
        msg.contains("relative_key") && msg.contains("absolute"),
        "{msg}"
    );

    let json = tiny_config_json("bert")
        .replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
    let msg = config_err(&json);
    assert!(
        msg.contains("divisible") && msg.contains("(8)") && msg.contains("(3)"),
        "{msg}"
    );

    // "absolute" is accepted explicitly.
    let dir = tmp();
    let path = dir.path().join("config.json");
    let json = tiny_config_json("bert").replace(
        "\"hidden_act\": \"gelu\"",
        "\"hidden_act\": \"gelu\", \"position_embedding_type\": \"absolute\"",
    );
    std::fs::write(&path, json).unwrap();
    BertConfig::from_file(&path).unwrap();
}

#[test]
fn config_missing_file_names_path() {
    let dir = tmp();
    let err = BertConfig::from_file(&dir.path().join("config.json")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("config.json"), "{err}");
}

// ---------------------------------------------------------------- model

#[test]
fn bare_and_prefixed_checkpoints_load_identically() {
    let tensors = tiny_tensors(true);
    let bare = tmp();
    let prefixed = tmp();
    write_model(bare.path(), &tiny_config_json("bert"), &tensors, "");
    write_model(
        prefixed.path(),
        &tiny_config_json("bert"),
        &tensors,
        "bert.",
    );
    let a = BertModel::load(bare.path()).unwrap();
    let b = BertModel::load(prefixed.path()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.layers.len(), L);
    assert_eq!(
        a.embeddings.word_embeddings,
        get(&tensors, "embeddings.word_embeddings.weight")
    );
    assert_eq!(
        a.layers[1].output.dense.weight,
        get(&tensors, "encoder.layer.1.output.dense.weight")
    );
    assert_eq!(
        (
            a.layers[1].output.dense.out_features,
            a.layers[1].output.dense.in_features
        ),
        (H, FF)
    );
    assert_eq!(a.layers[0].intermediate.dense.out_features, FF);
    assert_eq!(a.layers[0].output.layer_norm.eps, 1e-12);
    let pooler = a.pooler.as_ref().expect("pooler present");
    assert_eq!(pooler.dense.bias, get(&tensors, "pooler.dense.bias"));

    // RoBERTa checkpoints use the "roberta." prefix.
    let rob = tmp();
    write_model(
        rob.path(),
        &tiny_config_json("roberta"),
        &tensors,
        "roberta.",
    );
    let r = BertModel::load(rob.path()).unwrap();
    assert_eq!(r.layers, a.layers);
    assert_eq!(r.config.model_type, ModelType::Roberta);
}

#[test]
fn qkv_is_fused_query_then_key_then_value() {
    let tensors = tiny_tensors(false);
    let dir = tmp();
    write_model(dir.path(), &tiny_config_json("bert"), &tensors, "");
    let m = BertModel::load(dir.path()).unwrap();
    assert!(m.pooler.is_none(), "no pooler tensors, no pooler");
    for (i, layer) in m.layers.iter().enumerate() {
        let qkv = &layer.attention.self_attention.qkv;
        assert_eq!((qkv.out_features, qkv.in_features), (3 * H, H));
        assert_eq!(qkv.weight.len(), 3 * H * H);
        assert_eq!(qkv.bias.len(), 3 * H);
        for (j, part) in ["query", "key", "value"].iter().enumerate() {
            let p = format!("encoder.layer.{i}.attention.self.{part}");
            assert_eq!(
                &qkv.weight[j * H * H..(j + 1) * H * H],
                get(&tensors, &format!("{p}.weight"))
            );
            assert_eq!(
                &qkv.bias[j * H..(j + 1) * H],
                get(&tensors, &format!("{p}.bias"))
            );
        }
    }
}

#[test]
fn legacy_gamma_beta_layer_norm_names_load() {
    let tensors = tiny_tensors(false);
    let renamed: Vec<_> = tensors
        .iter()
        .map(|(n, s, d)| {
            let n = n
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (n, s.clone(), d.clone())
        })
        .collect();
    let a = tmp();
    let b = tmp();
    write_model(a.path(), &tiny_config_json("bert"), &tensors, "");
    write_model(b.path(), &tiny_config_json("bert"), &renamed, "bert.");
    assert_eq!(
        BertModel::load(a.path()).unwrap(),
        BertModel::load(b.path()).unwrap()
    );
}

#[test]
fn missing_tensor_is_named_with_what_was_tried() {
    let tensors: Vec<_> = tiny_tensors(false)
        .into_iter()
        .filter(|t| t.0 != "encoder.layer.1.output.dense.bias")
        .collect();
    let dir = tmp();
    write_model(dir.path(), &tiny_config_json("bert"), &tensors, "");
    let err = BertModel::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(
        msg.contains("missing tensor \"encoder.layer.1.output.dense.bias\""),
        "{msg}"
    );
    assert!(
        msg.contains("\"bert.encoder.layer.1.output.dense.bias\""),
        "{msg}"
    );
    assert!(
        msg.contains("\"roberta.encoder.layer.1.output.dense.bias\""),
        "{msg}"
    );

    // A LayerNorm reports its modern name and also the legacy one it tried.
    let tensors: Vec<_> = tiny_tensors(false)
        .into_iter()
        .filter(|t| t.0 != "embeddings.LayerNorm.weight")
        .collect();
    write_model(dir.path(), &tiny_config_json("bert"), &tensors, "");
    let msg = BertModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("missing tensor \"embeddings.LayerNorm.weight\""),
        "{msg}"
    );
    assert!(msg.contains("\"embeddings.LayerNorm.gamma\""), "{msg}");
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let mut tensors = tiny_tensors(false);
    let t = tensors
        .iter_mut()
        .find(|t| t.0 == "encoder.layer.0.intermediate.dense.weight")
        .unwrap();
    t.1 = vec![H, FF]; // transposed
    let dir = tmp();
    write_model(dir.path(), &tiny_config_json("bert"), &tensors, "bert.");
    let err = BertModel::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::ShapeMismatch { expected, found, .. } if *expected == vec![FF, H] && *found == vec![H, FF]),
        "{msg}"
    );
    assert!(
        msg.contains("bert.encoder.layer.0.intermediate.dense.weight"),
        "{msg}"
    );
    assert!(msg.contains("shape [8, 16], expected [16, 8]"), "{msg}");

    // A vocabulary that disagrees with config.json is caught the same way.
    let mut cfg = tiny_config_json("bert");
    cfg = cfg.replace(&format!("\"vocab_size\": {V}"), "\"vocab_size\": 21");
    write_model(dir.path(), &cfg, &tiny_tensors(false), "");
    let msg = BertModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("embeddings.word_embeddings.weight") && msg.contains("expected [21, 8]"),
        "{msg}"
    );
}

#[test]
fn missing_safetensors_mentions_pytorch_bin() {
    let dir = tmp();
    std::fs::write(dir.path().join("config.json"), tiny_config_json("bert")).unwrap();
    let msg = BertModel::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors not found"), "{msg}");

    std::fs::write(dir.path().join("pytorch_model.bin"), b"not really").unwrap();
    let err = BertModel::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingFile { .. }), "{msg}");
    assert!(msg.contains("model.safetensors not found"), "{msg}");
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("not supported"),
        "{msg}"
    );
}

#[test]
fn corrupt_safetensors_is_reported() {
    let dir = tmp();
    std::fs::write(dir.path().join("config.json"), tiny_config_json("bert")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x05\0\0\0\0\0\0\0{}",
    )
    .unwrap();
    let err = BertModel::load(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    assert!(
        err.to_string().contains("invalid safetensors file"),
        "{err}"
    );
}

// ---------------------------------------------------------------- weights

#[test]
fn f16_and_bf16_convert_to_f32() {
    let vals = [1.5f32, -2.0, 0.25, 0.0, 65504.0, -0.0078125];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect();
    let f64b: Vec<u8> = vals
        .iter()
        .flat_map(|&x| (x as f64).to_le_bytes())
        .collect();
    let ids: Vec<u8> = [101i64, -7, 1 << 40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let dir = tmp();
    let path = dir.path().join("w.safetensors");
    write_raw(
        &path,
        &[
            ("half", Dtype::F16, vec![2, 3], f16),
            ("bert.brain", Dtype::BF16, vec![6], bf16),
            ("double", Dtype::F64, vec![6], f64b),
            ("ids", Dtype::I64, vec![3], ids),
        ],
    );
    let w = WeightFile::open(&path).unwrap();
    assert_eq!(w.tensor("half", &[2, 3]).unwrap(), vals);
    // 65504 is not exact in bf16: compare with bf16 rounding.
    let expect_bf: Vec<f32> = vals
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(w.tensor("brain", &[6]).unwrap(), expect_bf);
    assert_eq!(w.tensor_f32("half").unwrap(), (vals.to_vec(), vec![2, 3]));
    assert_eq!(
        w.tensor_i64("ids").unwrap(),
        (vec![101, -7, 1 << 40], vec![3])
    );

    let msg = w.tensor("double", &[6]).unwrap_err().to_string();
    assert!(msg.contains("\"double\"") && msg.contains("F64"), "{msg}");
    let msg = w.tensor_i64("half").unwrap_err().to_string();
    assert!(msg.contains("F16") && msg.contains("integer"), "{msg}");

    assert!(w.has("brain") && w.has("bert.brain") && w.has("roberta.brain"));
    assert!(!w.has("nothing"));
    assert_eq!(w.resolve("brain").as_deref(), Some("bert.brain"));
    assert_eq!(w.shape("half"), Some(vec![2, 3]));
    assert_eq!(w.names(), vec!["bert.brain", "double", "half", "ids"]);
}

#[test]
fn save_tensors_round_trips_atomically() {
    let dir = tmp();
    let path = dir.path().join("ckpt.safetensors");
    let a = values(12, 7);
    let b = values(5, 8);
    save_tensors(
        &path,
        &[("a".into(), vec![3, 4], &a), ("b".into(), vec![5], &b)],
    )
    .unwrap();
    let w = WeightFile::open(&path).unwrap();
    assert_eq!(w.tensor("a", &[3, 4]).unwrap(), a);
    assert_eq!(w.tensor("b", &[5]).unwrap(), b);

    // Overwriting replaces the file and leaves no temp files behind. The old
    // map stays valid since the file is replaced, not rewritten.
    save_tensors(&path, &[("c".into(), vec![2], &[1.0, 2.0])]).unwrap();
    assert_eq!(w.tensor("a", &[3, 4]).unwrap(), a);
    let w2 = WeightFile::open(&path).unwrap();
    assert_eq!(w2.names(), vec!["c"]);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec!["ckpt.safetensors"]);

    let msg = save_tensors(&path, &[("x".into(), vec![2, 2], &[1.0, 2.0, 3.0])])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"x\"") && msg.contains("[2, 2]") && msg.contains("3 values"),
        "{msg}"
    );
    let msg = save_tensors(
        &dir.path().join("no/such/dir/x.safetensors"),
        &[("x".into(), vec![1], &[1.0])],
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("no/such/dir"), "{msg}");
    assert_eq!(WeightFile::open(&path).unwrap().names(), vec!["c"]);
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn missing_or_malformed_tokenizer_is_reported() {
    let dir = tmp();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{msg}");
    assert!(
        msg.contains(&dir.path().join("tokenizer.json").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("tokenizer.json") && msg.contains("required"),
        "{msg}"
    );

    std::fs::write(
        dir.path().join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": 3}",
    )
    .unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains("cannot parse tokenizer.json"), "{msg}");
}

#[test]
fn tokenizer_adds_specials_truncates_longest_first_and_ignores_file_padding() {
    let dir = tmp();
    std::fs::write(dir.path().join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.token_to_id("[CLS]"), Some(2));

    // The file's own truncation (4) and padding (32) are not applied.
    let e = tok.encode("The cat sat on the mat", None, 64).unwrap();
    assert_eq!(e.ids, vec![2, 5, 6, 7, 8, 5, 9, 3]);
    assert_eq!(e.type_ids, vec![0; 8]);
    assert!(!e.truncated);

    let e = tok.encode("the cat", Some("a dog ran"), 64).unwrap();
    assert_eq!(e.ids, vec![2, 5, 6, 3, 10, 11, 12, 3]);
    assert_eq!(e.type_ids, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    assert!(!e.truncated);

    // Exactly fitting is not truncation.
    let e = tok.encode("the cat", Some("a dog ran"), 8).unwrap();
    assert!(!e.truncated);

    // longest_first: 2 + 3 tokens into a budget of 7 - 3 = 4 drops from "a dog ran".
    let e = tok.encode("the cat", Some("a dog ran"), 7).unwrap();
    assert_eq!(e.ids, vec![2, 5, 6, 3, 10, 11, 3]);
    assert_eq!(e.type_ids, vec![0, 0, 0, 0, 1, 1, 1]);
    assert!(e.truncated);

    let e = tok.encode("the big cat sat on a mat", None, 4).unwrap();
    assert_eq!(e.ids, vec![2, 5, 14, 3]);
    assert!(e.truncated);

    let msg = tok
        .encode("the cat", Some("a dog"), 3)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("max_len 3"), "{msg}");
}

#[test]
fn tokenizer_pad_id_falls_back_to_config() {
    let dir = tmp();
    // No padding section and no [PAD]/<pad> token.
    let json = tiny_tokenizer_json()
        .replace("\"[PAD]\"", "\"[NOPE]\"")
        .replace(
            r#""padding": {"strategy": {"Fixed": 32}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[NOPE]"}"#,
            "\"padding\": null",
        );
    assert!(json.contains("\"padding\": null"));
    std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        tiny_config_json("roberta")
            .replace("\"hidden_act\"", "\"pad_token_id\": 7, \"hidden_act\""),
    )
    .unwrap();
    assert_eq!(Tokenizer::from_dir(dir.path()).unwrap().pad_id(), 7);
}

// ---------------------------------------------------------------- hub

fn hub_paths(root: &Path) -> HubPaths {
    HubPaths {
        ptuning_cache: root.join("ptuning"),
        hf_hub_cache: root.join("hf").join("hub"),
    }
}

/// Creates a fake HF cache entry for `id` with the given snapshots; `main`
/// is written to refs/main if given.
fn fake_hf_repo(paths: &HubPaths, id: &str, snapshots: &[&str], main: Option<&str>) -> PathBuf {
    let repo = paths.hf_repo_dir(id);
    for s in snapshots {
        let d = repo.join("snapshots").join(s);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), "{}").unwrap();
    }
    if let Some(m) = main {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), format!("{m}\n")).unwrap();
    }
    repo
}

#[test]
fn hub_existing_folder_is_used_as_is() {
    let root = tmp();
    let paths = hub_paths(root.path());
    let dir = root.path().join("my-model");
    std::fs::create_dir(&dir).unwrap();
    let arg = dir.to_str().unwrap();
    assert_eq!(resolve_model_in(arg, &paths).unwrap(), dir);

    let file = root.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let msg = resolve_model_in(file.to_str().unwrap(), &paths)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("is a file"), "{msg}");

    let msg = resolve_model_in("./no/such/folder", &paths)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("./no/such/folder") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn hub_id_not_in_cache_is_model_not_found() {
    let root = tmp();
    let paths = hub_paths(root.path());
    let err = resolve_model_in("google-bert/bert-base-uncased", &paths).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{msg}");
    assert!(msg.contains("\"google-bert/bert-base-uncased\""), "{msg}");
    assert!(msg.contains("offline"), "{msg}");
    let looked = paths.hf_repo_dir("google-bert/bert-base-uncased");
    assert!(looked.ends_with("models--google-bert--bert-base-uncased"));
    assert!(msg.contains(&looked.display().to_string()), "{msg}");

    // The default model is looked for in both caches.
    let msg = resolve_model_in(DEFAULT_MODEL, &paths)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("offline") && msg.contains("all-MiniLM-L6-v2"),
        "{msg}"
    );
}

#[test]
fn hub_id_resolves_to_refs_main_snapshot() {
    let root = tmp();
    let paths = hub_paths(root.path());
    let repo = fake_hf_repo(&paths, "org/enc", &["aaa111", "bbb222"], Some("aaa111"));
    assert_eq!(
        resolve_model_in("org/enc", &paths).unwrap(),
        repo.join("snapshots").join("aaa111")
    );

    // Without refs/main: the only snapshot.
    let repo = fake_hf_repo(&paths, "bare-name", &["ccc333"], None);
    assert_eq!(
        resolve_model_in("bare-name", &paths).unwrap(),
        repo.join("snapshots/ccc333")
    );

    // refs/main pointing to a missing snapshot falls back to one that exists.
    let repo = fake_hf_repo(&paths, "org/stale", &["ddd444"], Some("eee555"));
    assert_eq!(
        resolve_model_in("org/stale", &paths).unwrap(),
        repo.join("snapshots/ddd444")
    );
}

#[test]
fn hub_default_model_prefers_ptuning_cache_then_hf() {
    let root = tmp();
    let paths = hub_paths(root.path());
    let repo = fake_hf_repo(
        &paths,
        "sentence-transformers/all-MiniLM-L6-v2",
        &["fff666"],
        Some("fff666"),
    );
    // Only in the HF cache, under its full id: both spellings find it.
    assert_eq!(
        resolve_model_in(DEFAULT_MODEL, &paths).unwrap(),
        repo.join("snapshots/fff666")
    );
    assert_eq!(
        resolve_model_in("sentence-transformers/all-MiniLM-L6-v2", &paths).unwrap(),
        repo.join("snapshots/fff666")
    );
    // The ptuning cache wins when present.
    let ours = paths.default_model_dir();
    assert!(ours.ends_with("ptuning/models/all-MiniLM-L6-v2"));
    std::fs::create_dir_all(&ours).unwrap();
    assert_eq!(resolve_model_in(DEFAULT_MODEL, &paths).unwrap(), ours);
    assert_eq!(
        resolve_model_in("sentence-transformers/all-MiniLM-L6-v2", &paths).unwrap(),
        ours
    );
}

/// Run by `hub_from_env_reads_hf_home` in a child process with its own
/// environment, so no test here mutates the shared process environment.
#[test]
#[ignore = "run as a child process by hub_from_env_reads_hf_home"]
fn hub_env_child() {
    let expected =
        std::env::var("PTUNING_TEST_EXPECT").expect("run via hub_from_env_reads_hf_home");
    assert_eq!(
        ptuning::model::hub::resolve_model("org/enc").unwrap(),
        PathBuf::from(expected)
    );
    let p = HubPaths::from_env();
    assert_eq!(
        p.ptuning_cache,
        PathBuf::from(std::env::var("PTUNING_CACHE").unwrap())
    );
    assert_eq!(
        ptuning::model::hub::default_model_dir(),
        p.ptuning_cache.join("models/all-MiniLM-L6-v2")
    );
}

#[test]
fn hub_from_env_reads_hf_home() {
    let root = tmp();
    let hf_home = root.path().join("hf");
    let paths = hub_paths(root.path());
    assert_eq!(paths.hf_hub_cache, hf_home.join("hub"));
    let repo = fake_hf_repo(&paths, "org/enc", &["abc"], Some("abc"));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["hub_env_child", "--exact", "--ignored", "--test-threads=1"])
        .env("HF_HOME", &hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env("PTUNING_CACHE", root.path().join("ptuning"))
        .env("PTUNING_TEST_EXPECT", repo.join("snapshots/abc"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "child test did not run: {text}");
}

#[test]
fn parameters_are_counted_as_pytorch_counts_them() {
    // sum(p.numel()) of transformers' BertModel on the tiny fixture, pooler included.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let mut m = BertModel::load(&dir).unwrap();
    assert_eq!(m.num_parameters(), 32_704);
    m.pooler = None;
    assert_eq!(m.num_parameters(), 32_704 - (32 * 32 + 32));
}

// ---------------------------------------------------------------- real model

#[test]
fn minilm_from_ptuning_cache_if_present() {
    let dir = ptuning::model::hub::default_model_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipping: {} not present", dir.display());
        return;
    }
    let t0 = std::time::Instant::now();
    let m = BertModel::load(&dir).unwrap();
    let elapsed = t0.elapsed();
    eprintln!("loaded MiniLM in {elapsed:?}");
    assert!(elapsed.as_secs_f64() < 5.0, "loading took {elapsed:?}");
    assert_eq!(m.config.model_type, ModelType::Bert);
    assert_eq!(m.config.num_hidden_layers, 6);
    assert_eq!(m.config.hidden_size, 384);
    assert_eq!(m.config.num_attention_heads, 12);
    assert_eq!(m.config.intermediate_size, 1536);
    assert_eq!(m.layers.len(), 6);
    // PyTorch's sum(p.numel() for p in BertModel.parameters()).
    assert_eq!(m.num_parameters(), 22_713_216);
    assert_eq!(m.embeddings.word_embeddings.len(), 30522 * 384);
    assert_eq!(
        m.layers[5].attention.self_attention.qkv.weight.len(),
        3 * 384 * 384
    );
    assert!(m.embeddings.word_embeddings.iter().all(|x| x.is_finite()));

    // The fused QKV rows agree with the file's query/key/value.
    let w = WeightFile::open(&dir.join("model.safetensors")).unwrap();
    let qkv = &m.layers[3].attention.self_attention.qkv;
    let key = w
        .tensor("encoder.layer.3.attention.self.key.weight", &[384, 384])
        .unwrap();
    assert_eq!(&qkv.weight[384 * 384..2 * 384 * 384], key.as_slice());

    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.pad_id(), 0);
    let e = tok.encode("Hello world", None, 128).unwrap();
    assert_eq!(e.ids, vec![101, 7592, 2088, 102]);
    assert_eq!(e.type_ids, vec![0; 4]);
    assert!(!e.truncated);
    let e = tok.encode("Hello world", Some("Hello"), 128).unwrap();
    assert_eq!(e.ids, vec![101, 7592, 2088, 102, 7592, 102]);
    assert_eq!(e.type_ids, vec![0, 0, 0, 0, 1, 1]);
    // Longer than the file's own max_length (128): not truncated unless asked.
    let long = "word ".repeat(300);
    assert_eq!(tok.encode(&long, None, 512).unwrap().ids.len(), 302);
    let e = tok.encode(&long, None, 16).unwrap();
    assert_eq!(e.ids.len(), 16);
    assert!(e.truncated);
    assert_eq!(*e.ids.last().unwrap(), 102);
}
