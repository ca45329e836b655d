//! The engine against the PyTorch reference (tools/reference.py): hidden
//! states, pooled output, logits, loss, gradients of the prefix (and its MLP)
//! and of the head, and the parameters after one AdamW step.
//!
//! The MiniLM cases read the real model from the cache that
//! scripts/fetch-model.sh fills (or $PTUNING_MODEL_DIR).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ptuning::model::batch::Batch;
use ptuning::model::bert::BertModel;
use ptuning::model::encoder::{Activations, DropoutConfig};
use ptuning::model::heads::ClassificationHead;
use ptuning::model::hub::default_model_dir;
use ptuning::model::param::Param;
use ptuning::model::prefix::{PrefixConfig, PrefixEncoder};
use ptuning::model::prompt_model::{PromptModel, Targets};
use ptuning::model::weights::WeightFile;
use ptuning::training::adamw::{AdamW, AdamWConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir(name: &str) -> PathBuf {
    match name {
        "all-MiniLM-L6-v2" => {
            let dir =
                std::env::var_os("PTUNING_MODEL_DIR").map_or_else(default_model_dir, PathBuf::from);
            assert!(
                dir.join("model.safetensors").exists(),
                "{} has no model.safetensors: run scripts/fetch-model.sh first",
                dir.display()
            );
            dir
        }
        tiny => fixtures().join(tiny),
    }
}

struct Case {
    name: String,
    spec: serde_json::Value,
    tensors: WeightFile,
}

impl Case {
    fn load(name: &str) -> Case {
        let dir = fixtures().join("cases");
        let spec = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        Case {
            name: name.into(),
            spec: serde_json::from_str(&spec).unwrap(),
            tensors: WeightFile::open(&dir.join(format!("{name}.safetensors"))).unwrap(),
        }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        self.tensors
            .tensor_f32(name)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
            .0
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.tensors
            .tensor_i64(name)
            .unwrap()
            .0
            .iter()
            .map(|&x| x as u32)
            .collect()
    }

    fn usize(&self, key: &str) -> usize {
        self.spec[key].as_u64().unwrap() as usize
    }

    fn batch(&self) -> Batch {
        let mask = self
            .ids("attention_mask")
            .iter()
            .map(|&m| m as f32)
            .collect();
        Batch {
            batch: self.usize("batch"),
            seq: self.usize("seq"),
            input_ids: self.ids("input_ids"),
            token_type_ids: self.ids("token_type_ids"),
            attention_mask: mask,
        }
    }

    fn labels(&self) -> Vec<usize> {
        self.ids("labels").iter().map(|&l| l as usize).collect()
    }

    /// The model with the fixture's initial prefix and head.
    fn model(&self) -> PromptModel {
        let backbone =
            Arc::new(BertModel::load(&model_dir(self.spec["model"].as_str().unwrap())).unwrap());
        let c = &backbone.config;
        let layers = self.spec["prefix_layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_u64().unwrap() as usize)
            .collect();
        let config = PrefixConfig {
            len: self.usize("prefix_len"),
            projection: self.spec["prefix_projection"].as_bool().unwrap(),
            hidden_size: self.spec["prefix_hidden_size"].as_u64().unwrap_or(512) as usize,
            layers,
        };
        let mut prefix = PrefixEncoder::new(config, c.hidden_size, c.num_hidden_layers, 0).unwrap();
        let mut head = ClassificationHead::new(c.hidden_size, self.usize("num_labels"), 0);
        for p in prefix.params_mut().into_iter().chain(head.params_mut()) {
            self.set(p);
        }
        PromptModel {
            backbone,
            prefix,
            head,
        }
    }

    fn set(&self, p: &mut Param) {
        let (value, shape) = self.tensors.tensor_f32(&p.name).unwrap();
        assert_eq!(shape, p.shape, "{}: shape of {}", self.name, p.name);
        p.value = value;
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// ‖a − b‖ / ‖b‖
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn check_case(name: &str) {
    let case = Case::load(name);
    let mut model = case.model();
    let batch = case.batch();
    let labels = case.labels();
    let layers = model.backbone.layers.len();

    // The prefix encoder's output.
    let prefix = model.prefix.forward();
    let d = max_abs_diff(&prefix.past, &case.f32("prefix.past"));
    assert!(d <= 1e-5, "{name}: prefix.past differs by {d}");

    // Hidden states after the embeddings and after every layer, then the head.
    let prompt = model.prefix.expand(&prefix.past, batch.batch, None);
    let hidden = model
        .backbone
        .forward_observed(&batch, Some(&prompt), |i, h| {
            let d = max_abs_diff(h, &case.f32(&format!("hidden_states.{i}")));
            assert!(d <= 1e-4, "{name}: hidden_states.{i} differs by {d}");
        })
        .unwrap();
    let d = max_abs_diff(&hidden, &case.f32(&format!("hidden_states.{layers}")));
    assert!(d <= 1e-4, "{name}: last hidden state differs by {d}");
    let head = model.head.forward(
        model.backbone.pooler.as_ref(),
        &hidden,
        batch.batch,
        batch.seq,
        None,
    );
    let d = max_abs_diff(&head.pooled, &case.f32("pooled"));
    assert!(d <= 1e-4, "{name}: pooled output differs by {d}");
    let d = max_abs_diff(&head.logits, &case.f32("logits"));
    assert!(d <= 1e-4, "{name}: logits differ by {d}");

    // Loss and gradients, dropout off.
    let mut acts = Activations::default();
    model.zero_grad();
    let out = model
        .forward_backward(
            &batch,
            Targets::Classes(&labels),
            &DropoutConfig::OFF,
            &mut acts,
        )
        .unwrap();
    let loss = case.f32("loss")[0];
    assert!(
        (out.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
        "{name}: loss {} vs {loss}",
        out.loss
    );
    for p in model.params_mut() {
        let e = rel_err(&p.grad, &case.f32(&format!("grad.{}", p.name)));
        assert!(
            e <= 1e-3,
            "{name}: grad of {} has relative error {e}",
            p.name
        );
    }

    // One AdamW step, from the reference's gradients so that the optimizer is
    // checked exactly: entries whose gradient is near ε would otherwise amplify
    // the (already checked) gradient differences.
    let spec = &case.spec;
    let betas = spec["betas"].as_array().unwrap();
    let config = AdamWConfig {
        lr: spec["lr"].as_f64().unwrap() as f32,
        betas: (
            betas[0].as_f64().unwrap() as f32,
            betas[1].as_f64().unwrap() as f32,
        ),
        eps: spec["eps"].as_f64().unwrap() as f32,
        weight_decay: spec["weight_decay"].as_f64().unwrap() as f32,
    };
    let lr = config.lr;
    let mut opt = AdamW::new(config);
    for p in model.params_mut() {
        p.grad = case.f32(&format!("grad.{}", p.name));
    }
    opt.step(&mut model.params_mut(), lr);
    for p in model.params_mut() {
        let d = max_abs_diff(&p.value, &case.f32(&format!("step.{}", p.name)));
        assert!(
            d <= 1e-6,
            "{name}: {} after one AdamW step differs by {d}",
            p.name
        );
    }
}

#[test]
fn tiny_bert_plain_prefix_on_every_layer() {
    check_case("tiny_bert_plain");
}

#[test]
fn tiny_bert_reparameterized_prefix_on_top_layers() {
    check_case("tiny_bert_mlp_subset");
}

#[test]
fn tiny_roberta_plain_prefix_on_the_top_layer() {
    check_case("tiny_roberta_plain_subset");
}

#[test]
fn tiny_roberta_reparameterized_prefix_on_every_layer() {
    check_case("tiny_roberta_mlp");
}

#[test]
fn minilm_plain_prefix_on_every_layer() {
    check_case("minilm_plain");
}

#[test]
fn minilm_reparameterized_prefix_on_two_layers() {
    check_case("minilm_mlp_subset");
}
