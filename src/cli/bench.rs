//! `ptuning bench`: the speed and memory figures of the engine on full-length
//! sequences, comparable with bench/torch_peer.py on the same shapes.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use crate::engine::cuda::KernelTime;
use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::bert::BertModel;
use crate::model::encoder::{Activations, DropoutConfig};
use crate::model::heads::ClassificationHead;
use crate::model::hub::resolve_model;
use crate::model::prefix::{method_layers, PrefixConfig, PrefixEncoder, PromptMethod};
use crate::model::prompt_model::{PromptModel, Targets};
use crate::rng::Rng;
use crate::training::adamw::{AdamW, AdamWConfig};

/// Bytes per MiB: device memory is reported as PyTorch's
/// `max_memory_allocated` / 2^20 is.
const MIB: f64 = (1u64 << 20) as f64;

/// What ran on the GPU, as the report gives it.
struct GpuRun {
    name: String,
    precision: &'static str,
    /// "3xTF32", "SGEMM", "TF32" or "BF16".
    gemm: &'static str,
    /// "tensor cores (bf16)", ..., or "f32".
    attention: String,
    /// Bytes held by the device's buffers (MiB): once the weights are up,
    /// and at most over training and inference.
    after_load_mib: f64,
    peak_mib: f64,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model folder or hub id.
    #[arg(long, default_value = crate::model::hub::DEFAULT_MODEL)]
    model: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// p-tuning-v2 (deep prompts: P keys and values at every layer) or
    /// prompt-tuning (the shallow baseline: P embeddings in front of the
    /// input, so the layers run on P+T rows and the backward reaches the
    /// embeddings).
    #[arg(long, default_value = "p-tuning-v2")]
    method: PromptMethod,
    /// P, the number of virtual tokens.
    #[arg(long, default_value_t = 16)]
    prefix_len: usize,
    /// Layers with a prefix: all, a range 0-5, a list, or top:k (P-Tuning v2
    /// only).
    #[arg(long, default_value = "all")]
    prefix_layers: String,
    /// Reparameterize the prefix through an MLP.
    #[arg(long)]
    prefix_projection: bool,
    #[arg(long, default_value_t = 512)]
    prefix_hidden_size: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// On a GPU: time every kernel and GEMM of the measured steps and print
    /// where a training step and an inference go (stderr; "profile" in the
    /// JSON). The events add a little time to the steps themselves.
    #[arg(long)]
    profile: bool,
}

/// Starts or reads the GPU profile of `model` (None on the CPU).
fn profile_start(model: &PromptModel, on: bool) {
    if let (true, Some(gpu)) = (on, &model.gpu) {
        gpu.lock()
            .unwrap_or_else(|e| e.into_inner())
            .dev
            .start_profile();
    }
}

/// The kernel times since `profile_start`, per step (`steps` of them), and
/// printed to stderr as a table under `title`.
fn profile_take(
    model: &PromptModel,
    on: bool,
    (steps, wall_ms): (usize, f64),
    attention: Option<AttentionDims>,
    title: &str,
) -> Result<Vec<KernelTime>> {
    let Some(gpu) = model.gpu.as_ref().filter(|_| on) else {
        return Ok(Vec::new());
    };
    let mut times = gpu
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .dev
        .take_profile()?;
    for t in &mut times {
        t.ms /= steps as f64;
        t.launches /= steps;
    }
    let total: f64 = times.iter().map(|t| t.ms).sum();
    eprintln!(
        "\n{title}: {total:.2} ms of kernels per step ({} launches), {wall_ms:.2} ms wall (median)",
        times.iter().map(|t| t.launches).sum::<usize>()
    );
    eprintln!(
        "{:<44} {:>8} {:>9} {:>6} {:>8}",
        "kernel", "launches", "ms", "share", "TFLOP/s"
    );
    for t in &times {
        let tflops = match step_flop(t, &times, attention) {
            Some(flop) => format!("{:.1}", flop / (t.ms * 1e9)),
            None => "-".into(),
        };
        eprintln!(
            "{:<44} {:>8} {:>9.3} {:>5.1}% {:>8}",
            t.name,
            t.launches,
            t.ms,
            100.0 * t.ms / total.max(1e-12),
            tflops
        );
    }
    Ok(times)
}

/// The attention shape of a bench step with a prompt on every layer: B
/// rows of T queries, P prefix keys, NH heads of HD. Prompt tuning's layers
/// see T = P + tokens rows and no prefix keys (P = 0).
#[derive(Clone, Copy, Debug)]
struct AttentionDims {
    batch: usize,
    seq: usize,
    prefix: usize,
    heads: usize,
    head_dim: usize,
}

/// The matrix FLOP of a profiled kernel in one step (`t`: its launches per
/// step; `all`: the step's other kernels), where its name says them: a
/// GEMM by its shape (`gemm <math> MxNxK <ops>`: 2·M·N·K a launch), the
/// attention kernels by `attention` (None: unknown, as with a prompt on
/// some layers only). Per (batch row, head), T queries meet N = P + T keys
/// in products of HD: the forward makes 2 products of 2·T·N·HD (scores,
/// then probabilities by values), dQ 3 (the scores again, dP, dQ), dK/dV 4
/// (the scores again, dP, dK, dV); the lowest layer's dK/dV (the launches
/// beyond dQ's) takes the P prefix keys only. (Under prompt tuning every
/// layer runs dQ and dK/dV over all its keys: the backward goes on to the
/// embeddings.)
fn step_flop(t: &KernelTime, all: &[KernelTime], attention: Option<AttentionDims>) -> Option<f64> {
    if let Some(shape) = t.name.strip_prefix("gemm ") {
        let dims = shape.split(' ').nth(1)?;
        let mnk: Vec<f64> = dims
            .split('x')
            .map(|d| d.parse().ok())
            .collect::<Option<_>>()?;
        return match mnk[..] {
            [m, n, k] => Some(2.0 * m * n * k * t.launches as f64),
            _ => None,
        };
    }
    let a = attention?;
    let product = |keys: usize| 2.0 * (a.batch * a.heads * a.seq * keys * a.head_dim) as f64;
    let full = product(a.prefix + a.seq);
    let launches = t.launches as f64;
    let of = |prefix: &str| t.name == prefix || t.name.starts_with(&format!("{prefix}_"));
    if of("attention_forward") {
        Some(2.0 * full * launches)
    } else if of("attention_backward_dq") {
        Some(3.0 * full * launches)
    } else if of("attention_backward_dkv") {
        let with_dq: usize = all
            .iter()
            .filter(|k| k.name.starts_with("attention_backward_dq"))
            .map(|k| k.launches)
            .sum();
        let prefix_only = t.launches.saturating_sub(with_dq) as f64;
        Some(4.0 * (full * (launches - prefix_only) + product(a.prefix) * prefix_only))
    } else {
        None
    }
}

/// Resident set size now and at its peak (VmRSS, VmHWM), in MB.
pub fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn median_ms(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

pub fn run(args: BenchArgs, compute: Compute) -> Result<()> {
    if args.iters == 0 || args.batch == 0 || args.seq < 2 {
        return Err(Error::InvalidArgument(
            "--iters and --batch must be positive and --seq at least 2".into(),
        ));
    }
    let dir = resolve_model(&args.model)?;
    let backbone = Arc::new(BertModel::load(&dir)?);
    let config = backbone.config.clone();
    let room = config.tokens_after_prompt(args.prefix_len);
    if args.seq > room {
        return Err(Error::InvalidArgument(format!(
            "--seq {} after a prompt of {} needs more than the model's {} positions: pass --seq {room} or less",
            args.seq, args.prefix_len, config.max_position_embeddings
        )));
    }
    let layers = method_layers(args.method, &args.prefix_layers, config.num_hidden_layers)?;
    let prefix = PrefixEncoder::new(
        PrefixConfig {
            method: args.method,
            len: args.prefix_len,
            projection: args.prefix_projection,
            hidden_size: args.prefix_hidden_size,
            layers,
        },
        config.hidden_size,
        config.num_hidden_layers,
        1,
    )?;
    let head = ClassificationHead::new(config.hidden_size, 2, 2);
    let mut model = PromptModel {
        backbone,
        prefix,
        head,
        gpu: None,
    };
    let (rss_after_load, _) = rss_mb();

    // Full-length random sequences: [CLS] ... [SEP] shapes do not matter for speed.
    // Ids from 1000 up (past BERT's special and unused tokens), or from the
    // middle of a small test vocabulary.
    let mut rng = Rng::new(0);
    let low = 1000.min(config.vocab_size / 2);
    let sequences: Vec<(Vec<u32>, Vec<u32>)> = (0..args.batch)
        .map(|_| {
            let ids = (0..args.seq)
                .map(|_| (low + rng.below(config.vocab_size - low)) as u32)
                .collect();
            (ids, vec![0; args.seq])
        })
        .collect();
    let batch = Batch::pad(&sequences, config.pad_token_id as u32)?;
    let labels: Vec<usize> = (0..args.batch).map(|b| b % 2).collect();

    model.use_compute(compute)?;
    // Device memory held once the weights are up, on a GPU.
    let after_load_mib = model
        .gpu
        .as_ref()
        .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).dev.memory().now as f64 / MIB);
    if args.profile && model.gpu.is_none() {
        return Err(Error::InvalidArgument(
            "--profile times GPU kernels; it needs --device cuda (or auto on a machine with a GPU)"
                .into(),
        ));
    }
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut acts = Activations::default();
    let mut train = Vec::new();
    for i in 0..args.warmup + args.iters {
        let dropout = DropoutConfig {
            hidden: config.hidden_dropout_prob,
            attention: config.attention_probs_dropout_prob,
            seed: i as u64,
        };
        if i == args.warmup {
            profile_start(&model, args.profile);
        }
        let start = Instant::now();
        model.zero_grad();
        model.forward_backward(&batch, Targets::Classes(&labels), &dropout, &mut acts)?;
        let lr = opt.config.lr;
        model.optimizer_step(&mut opt, lr, 0.0)?;
        // On a GPU the backward and the update may still be running.
        model.synchronize()?;
        if i >= args.warmup {
            train.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    drop(acts);
    let train_ms = median_ms(train);
    // The attention kernels' FLOP, for the profile: with a deep prompt on
    // every layer (T queries, P + T keys), or with prompt tuning's (P + T
    // queries and keys, no prefix keys); unknown with a prefix on some
    // layers only.
    let dims = |seq, prefix| AttentionDims {
        batch: args.batch,
        seq,
        prefix,
        heads: config.num_attention_heads,
        head_dim: config.head_dim(),
    };
    let attention = match args.method {
        PromptMethod::PTuningV2 => (model.prefix.config.layers.len() == config.num_hidden_layers)
            .then(|| dims(args.seq, args.prefix_len)),
        PromptMethod::PromptTuning => Some(dims(args.prefix_len + args.seq, 0)),
    };
    let take_profile = |model: &PromptModel, wall_ms: f64, title: &str| {
        profile_take(model, args.profile, (args.iters, wall_ms), attention, title)
    };
    let train_profile = take_profile(&model, train_ms, "training step")?;
    // The table folded once, as an evaluation over many batches does.
    let past = model.prefix.table();
    let mut infer = Vec::new();
    for i in 0..args.warmup + args.iters {
        if i == args.warmup {
            profile_start(&model, args.profile);
        }
        let start = Instant::now();
        let logits = model.predict_with_table(&batch, &past)?;
        std::hint::black_box(logits);
        if i >= args.warmup {
            infer.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let infer_ms = median_ms(infer);
    // Matrix TFLOP/s of the inference forward: the rows every layer runs
    // (T with a deep prompt, whose P keys and values join the attention;
    // P + T under prompt tuning, attending to each other, no prefix keys).
    let infer_flop = match args.method {
        PromptMethod::PTuningV2 => config.forward_flop(
            args.batch,
            args.seq,
            args.prefix_len,
            model.prefix.config.layers.len(),
        ),
        PromptMethod::PromptTuning => {
            config.forward_flop(args.batch, args.prefix_len + args.seq, 0, 0)
        }
    };
    let infer_tflops = infer_flop / (infer_ms * 1e9);
    let infer_profile = take_profile(&model, infer_ms, "inference")?;
    let (_, peak) = rss_mb();
    let gpu = model.gpu.as_ref().map(|g| {
        let g = g.lock().unwrap_or_else(|e| e.into_inner());
        // Which attention kernels run: the tensor cores in bf16, tf32 and
        // fp32 by 3xTF32 (tf32x3) when the device passed their self-test,
        // else the f32 ones.
        let attention = match g.dev.attention_format(g.precision) {
            Some(format) => format!("tensor cores ({})", format.as_str()),
            None => "f32".to_string(),
        };
        GpuRun {
            name: g.dev.name.clone(),
            precision: g.precision.as_str(),
            gemm: g.gemm_math(),
            attention,
            after_load_mib: after_load_mib.unwrap_or(0.0),
            peak_mib: g.dev.memory().peak as f64 / MIB,
        }
    });
    let threads = rayon::current_num_threads();
    if args.json {
        let mut out = serde_json::json!({
            "impl": "ptuning",
            "device": gpu.as_ref().map_or("cpu", |g| g.name.as_str()),
            "precision": gpu.as_ref().map(|g| g.precision),
            "attention": gpu.as_ref().map(|g| g.attention.as_str()),
            "gemm": gpu.as_ref().map(|g| g.gemm),
            "device_after_load_mib": gpu.as_ref().map(|g| g.after_load_mib),
            "device_peak_mib": gpu.as_ref().map(|g| g.peak_mib),
            "threads": threads,
            "method": args.method.name(),
            "batch": args.batch,
            "seq": args.seq,
            "prefix_len": args.prefix_len,
            "train_step_ms": train_ms,
            "infer_ms": infer_ms,
            "infer_tflops": infer_tflops,
            "rss_after_load_mb": rss_after_load,
            "peak_rss_mb": peak,
            "working_mb": peak - rss_after_load,
        });
        if args.profile {
            out["profile"] = serde_json::json!({"train": train_profile, "infer": infer_profile});
        }
        println!("{out}");
    } else {
        let prompt = match args.method {
            PromptMethod::PTuningV2 => format!("prefix {} (p-tuning-v2)", args.prefix_len),
            PromptMethod::PromptTuning => format!(
                "prompt {} (prompt-tuning: {} rows a sequence through every layer)",
                args.prefix_len,
                args.prefix_len + args.seq
            ),
        };
        println!(
            "model {} ({} layers, hidden {}), batch {} x seq {}, {prompt}, {} threads",
            dir.display(),
            config.num_hidden_layers,
            config.hidden_size,
            args.batch,
            args.seq,
            threads
        );
        if let Some(g) = &gpu {
            println!(
                "device {} ({}: {} GEMMs, attention on {})",
                g.name, g.precision, g.gemm, g.attention
            );
        }
        println!(
            "train step (fwd+bwd+AdamW)  {train_ms:>9.1} ms (median of {})",
            args.iters
        );
        println!(
            "inference forward           {infer_ms:>9.1} ms ({infer_tflops:.3} TFLOP/s of matrix products)"
        );
        if let Some(g) = &gpu {
            println!(
                "device memory               {:>9.1} MiB peak ({:.1} MiB after load)",
                g.peak_mib, g.after_load_mib
            );
        }
        println!("RSS after load              {rss_after_load:>9.1} MB");
        println!(
            "peak RSS                    {peak:>9.1} MB (working {:.1} MB)",
            peak - rss_after_load
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(name: &str, launches: usize) -> KernelTime {
        KernelTime {
            name: name.into(),
            launches,
            ms: 1.0,
        }
    }

    #[test]
    fn flop_of_gemms_and_attention() {
        let dims = AttentionDims {
            batch: 2,
            seq: 4,
            prefix: 1,
            heads: 1,
            head_dim: 2,
        };
        // Two layers: both run the forward and dK/dV, only the top one dQ;
        // the lowest one's dK/dV takes the prefix key alone.
        let step = [
            kernel("gemm bf16 96x21x32 TN", 3),
            kernel("attention_forward_bf16", 2),
            kernel("attention_backward_dq_bf16", 1),
            kernel("attention_backward_dkv_bf16", 2),
            kernel("attention_delta", 2),
            kernel("bias_gelu", 2),
        ];
        let flop = |i: usize, dims| step_flop(&step[i], &step, dims);
        assert_eq!(flop(0, None), Some(2.0 * 96.0 * 21.0 * 32.0 * 3.0));
        // One product over the 5 keys: 2·B·NH·T·N·HD = 160; over the prefix key: 32.
        assert_eq!(flop(1, Some(dims)), Some(2.0 * 160.0 * 2.0));
        assert_eq!(flop(2, Some(dims)), Some(3.0 * 160.0));
        assert_eq!(flop(3, Some(dims)), Some(4.0 * (160.0 + 32.0)));
        assert_eq!(flop(1, None), None);
        assert_eq!(flop(4, Some(dims)), None);
        assert_eq!(flop(5, Some(dims)), None);
        // The f32 kernels' names are the bare prefixes.
        assert_eq!(
            step_flop(&kernel("attention_forward", 1), &[], Some(dims)),
            Some(2.0 * 160.0)
        );
        assert_eq!(step_flop(&kernel("gemm fp32 8x8 NN", 1), &[], None), None);
    }

    #[test]
    fn flop_of_prompt_tuning_attention() {
        // Prompt tuning: P + T = 5 rows attend to each other, no prefix keys;
        // every layer runs dQ and dK/dV over all 5 keys.
        let dims = AttentionDims {
            batch: 2,
            seq: 5,
            prefix: 0,
            heads: 1,
            head_dim: 2,
        };
        let step = [
            kernel("attention_forward_bf16", 2),
            kernel("attention_backward_dq_bf16", 2),
            kernel("attention_backward_dkv_bf16", 2),
        ];
        let flop = |i: usize| step_flop(&step[i], &step, Some(dims));
        // One product: 2·B·NH·(P+T)·(P+T)·HD = 200.
        assert_eq!(flop(0), Some(2.0 * 200.0 * 2.0));
        assert_eq!(flop(1), Some(3.0 * 200.0 * 2.0));
        assert_eq!(flop(2), Some(4.0 * 200.0 * 2.0));
    }
}
