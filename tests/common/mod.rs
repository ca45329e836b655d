//! The reference fixtures of tools/reference.py (tests/fixtures/cases), shared
//! by the CPU golden tests and the GPU ones.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::sync::Arc;

use ptuning::model::batch::Batch;
use ptuning::model::bert::BertModel;
use ptuning::model::encoder::{Activations, DropoutConfig};
use ptuning::model::heads::ClassificationHead;
use ptuning::model::hub::default_model_dir;
use ptuning::model::param::Param;
use ptuning::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
use ptuning::model::prompt_model::{PromptModel, StepOutput, Targets};
use ptuning::model::weights::WeightFile;

/// The repository: $PTUNING_TEST_ROOT when the test binary runs away from
/// its source tree (bench/gpu.sh on a GPU machine), else where it was built.
pub fn repo_root() -> PathBuf {
    std::env::var_os("PTUNING_TEST_ROOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// tests/fixtures of [`repo_root`].
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

fn minilm_dir() -> PathBuf {
    std::env::var_os("PTUNING_MODEL_DIR").map_or_else(default_model_dir, PathBuf::from)
}

/// The C++ compiler that builds tools/cuda_emu ($CXX, else g++), where the
/// CUDA engine's tests then also run on the emulated device; Err says why
/// not: no compiler, or PTUNING_TEST_EMULATION=0 (bench/gpu.sh sets it on a
/// GPU machine, where the emulated runs would repeat CI's on device time).
pub fn emulator_cxx() -> Result<String, String> {
    if std::env::var("PTUNING_TEST_EMULATION").as_deref() == Ok("0") {
        return Err("PTUNING_TEST_EMULATION=0".into());
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    match std::process::Command::new(&cxx).arg("--version").output() {
        Ok(_) => Ok(cxx),
        Err(_) => Err(format!("no C++ compiler ({cxx})")),
    }
}

/// Whether the real MiniLM is here (always in CI: the test script fetches it).
pub fn minilm_available() -> bool {
    minilm_dir().join("model.safetensors").exists()
}

pub fn model_dir(name: &str) -> PathBuf {
    match name {
        "all-MiniLM-L6-v2" => {
            let dir = minilm_dir();
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

pub struct Case {
    pub name: String,
    pub spec: serde_json::Value,
    tensors: WeightFile,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = fixtures().join("cases");
        let spec = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        Case {
            name: name.into(),
            spec: serde_json::from_str(&spec).unwrap(),
            tensors: WeightFile::open(&dir.join(format!("{name}.safetensors"))).unwrap(),
        }
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
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

    pub fn usize(&self, key: &str) -> usize {
        self.spec[key].as_u64().unwrap() as usize
    }

    pub fn batch(&self) -> Batch {
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

    pub fn labels(&self) -> Vec<usize> {
        self.ids("labels").iter().map(|&l| l as usize).collect()
    }

    /// The prompt's method: P-Tuning v2 unless the case says otherwise
    /// (tools/prompt_tuning_reference.py writes prompt tuning's).
    pub fn method(&self) -> PromptMethod {
        self.spec["method"]
            .as_str()
            .map_or(PromptMethod::PTuningV2, |m| m.parse().unwrap())
    }

    /// A head per token (tags [B, T] in `labels`) rather than a pooled one.
    pub fn per_token(&self) -> bool {
        self.spec["head"].as_str() == Some("tokens")
    }

    /// The model with the fixture's initial prefix and head.
    pub fn model(&self) -> PromptModel {
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
            method: self.method(),
            len: self.usize("prefix_len"),
            projection: self.spec["prefix_projection"].as_bool().unwrap(),
            hidden_size: self.spec["prefix_hidden_size"].as_u64().unwrap_or(512) as usize,
            layers,
        };
        let mut prefix = PrefixEncoder::new(config, c.hidden_size, c.num_hidden_layers, 0).unwrap();
        let mut head = ClassificationHead {
            per_token: self.per_token(),
            ..ClassificationHead::new(c.hidden_size, self.usize("num_labels"), 0)
        };
        for p in prefix.params_mut().into_iter().chain(head.params_mut()) {
            self.set(p);
        }
        PromptModel {
            backbone,
            prefix,
            head,
            gpu: None,
        }
    }

    /// One forward and backward of `model` on the case's batch and labels,
    /// dropout off, from zero gradients, with every gradient in its
    /// parameter (also a prefix table's kept on a GPU).
    pub fn step(&self, model: &mut PromptModel) -> StepOutput {
        self.step_with(model, &DropoutConfig::OFF)
    }

    /// [`Case::step`] with `dropout`.
    pub fn step_with(&self, model: &mut PromptModel, dropout: &DropoutConfig) -> StepOutput {
        model.zero_grad();
        let classes = self.labels();
        let tags = self.tensors.tensor_i64("labels").unwrap().0;
        let targets = match self.per_token() {
            true => Targets::Tokens(&tags),
            false => Targets::Classes(&classes),
        };
        let out = model
            .forward_backward(&self.batch(), targets, dropout, &mut Activations::default())
            .unwrap();
        model.grads_to_host().unwrap();
        out
    }

    fn set(&self, p: &mut Param) {
        let (value, shape) = self.tensors.tensor_f32(&p.name).unwrap();
        assert_eq!(shape, p.shape, "{}: shape of {}", self.name, p.name);
        p.value = value;
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// ‖a − b‖ / ‖b‖
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}
