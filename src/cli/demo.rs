//! `ptuning demo`: the short end-to-end run the README starts with. It trains a
//! deep prompt (and a linear head) on SuperGLUE CB's train split with the frozen
//! default backbone, and reports dev accuracy after each epoch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::bert::BertModel;
use crate::model::encoder::{Activations, DropoutConfig};
use crate::model::heads::ClassificationHead;
use crate::model::hub::resolve_model;
use crate::model::prefix::{parse_layers, PrefixConfig, PrefixEncoder};
use crate::model::prompt_model::{PromptModel, Targets};
use crate::model::tokenizer::Tokenizer;
use crate::rng::Rng;
use crate::training::adamw::{AdamW, AdamWConfig};

const LABELS: [&str; 3] = ["entailment", "contradiction", "neutral"];

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Model folder or hub id.
    #[arg(long, default_value = crate::model::hub::DEFAULT_MODEL)]
    model: String,
    /// SuperGLUE CB folder (train.jsonl, val.jsonl).
    #[arg(long, default_value = "../shared/data/superglue/CB")]
    data: PathBuf,
    #[arg(long, default_value_t = 16)]
    prefix_len: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f32,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    max_seq_len: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// One CB example: premise, hypothesis and label index.
struct Example {
    premise: String,
    hypothesis: String,
    label: usize,
}

/// Reads a CB jsonl split; errors name the file and line.
fn read_cb(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |message: String| Error::Json {
            path: path.to_path_buf(),
            message: format!("line {}: {message}", i + 1),
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let field = |name: &str| {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| at(format!("expected a string field {name:?}")))
        };
        let label = field("label")?;
        let label = LABELS.iter().position(|&l| l == label).ok_or_else(|| {
            at(format!(
                "unknown label {label:?}; expected one of {LABELS:?}"
            ))
        })?;
        out.push(Example {
            premise: field("premise")?,
            hypothesis: field("hypothesis")?,
            label,
        });
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no examples",
            path.display()
        )));
    }
    Ok(out)
}

fn batches(
    tokenizer: &Tokenizer,
    examples: &[&Example],
    max_len: usize,
    pad: u32,
) -> Result<(Batch, Vec<usize>)> {
    let mut seqs = Vec::with_capacity(examples.len());
    for e in examples {
        let enc = tokenizer.encode(&e.premise, Some(&e.hypothesis), max_len)?;
        seqs.push((enc.ids, enc.type_ids));
    }
    Ok((
        Batch::pad(&seqs, pad)?,
        examples.iter().map(|e| e.label).collect(),
    ))
}

fn accuracy(
    model: &PromptModel,
    tokenizer: &Tokenizer,
    dev: &[Example],
    args: &DemoArgs,
    pad: u32,
) -> Result<f64> {
    let mut correct = 0;
    for chunk in dev.chunks(args.batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (batch, labels) = batches(tokenizer, &refs, args.max_seq_len, pad)?;
        let logits = model.predict(&batch)?;
        let c = model.head.num_labels();
        for (row, &label) in logits.chunks(c).zip(&labels) {
            let argmax = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            correct += usize::from(argmax == label);
        }
    }
    Ok(correct as f64 / dev.len() as f64)
}

pub fn run(args: DemoArgs) -> Result<()> {
    let dir = resolve_model(&args.model)?;
    let backbone = Arc::new(BertModel::load(&dir)?);
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let config = backbone.config.clone();
    let pad = config.pad_token_id as u32;
    let train = read_cb(&args.data.join("train.jsonl"))?;
    let dev = read_cb(&args.data.join("val.jsonl"))?;
    println!(
        "model {} ({} layers, hidden {}); CB: {} train, {} dev examples",
        dir.display(),
        config.num_hidden_layers,
        config.hidden_size,
        train.len(),
        dev.len()
    );

    let prefix = PrefixEncoder::new(
        PrefixConfig {
            len: args.prefix_len,
            projection: false,
            hidden_size: 512,
            layers: parse_layers("all", config.num_hidden_layers)?,
        },
        config.hidden_size,
        config.num_hidden_layers,
        args.seed,
    )?;
    let head = ClassificationHead::new(config.hidden_size, LABELS.len(), args.seed + 1);
    let mut model = PromptModel {
        backbone,
        prefix,
        head,
    };
    let mut opt = AdamW::new(AdamWConfig {
        lr: args.lr,
        ..Default::default()
    });
    let mut acts = Activations::default();
    let mut rng = Rng::new(args.seed);
    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let total = (steps_per_epoch * args.epochs).max(1);
    let mut step = 0;
    println!(
        "dev accuracy before training: {:.3}",
        accuracy(&model, &tokenizer, &dev, &args, pad)?
    );
    for epoch in 1..=args.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut loss_sum = 0.0;
        for chunk in order.chunks(args.batch_size) {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let (batch, labels) = batches(&tokenizer, &refs, args.max_seq_len, pad)?;
            let dropout = DropoutConfig {
                hidden: config.hidden_dropout_prob,
                attention: config.attention_probs_dropout_prob,
                seed: args.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            model.zero_grad();
            let out =
                model.forward_backward(&batch, Targets::Classes(&labels), &dropout, &mut acts)?;
            // linear decay to zero
            let lr = args.lr * (1.0 - step as f32 / total as f32);
            opt.step(&mut model.params_mut(), lr);
            loss_sum += out.loss as f64;
            step += 1;
        }
        let acc = accuracy(&model, &tokenizer, &dev, &args, pad)?;
        println!(
            "epoch {epoch}: train loss {:.4}, dev accuracy {acc:.3} ({:.1} s)",
            loss_sum / steps_per_epoch as f64,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
