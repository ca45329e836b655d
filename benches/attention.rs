//! Attention kernel timings: `cargo bench --bench attention`.
//!
//! MiniLM (NH=12, HD=32) and bert-base (NH=12, HD=64) shapes at B=16, T=128,
//! P=16, every token real (the full-length worst case: padding is skipped).
//! Prints the median and the min of several runs in ms and GFLOP/s (2 flops
//! per FMA, matrix products only). `ATTN_BENCH_ITERS` sets the run count.

use ptuning::engine::cpu::attention::{attention_backward, attention_forward, AttentionShape};
use ptuning::engine::cpu::dropout::Dropout;
use std::time::Instant;

/// Deterministic uniform values in [-1, 1).
fn fill(v: &mut [f32], mut state: u64) {
    for x in v.iter_mut() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *x = ((state >> 40) as f32) / (1u64 << 23) as f32 - 1.0;
    }
}

/// (median, min) wall time of `f` in ms, after warm-up. The min is printed
/// too because on a shared 2-core machine one preempted rayon worker doubles a
/// run's time.
fn median_ms(iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    (times[iters / 2], times[0])
}

fn report(name: &str, (median, min): (f64, f64), flops: f64) {
    let gflops = |ms: f64| flops / (ms * 1e-3) / 1e9;
    println!(
        "{name:<44} median {median:7.3} ms {:6.1} GFLOP/s   min {min:7.3} ms {:6.1} GFLOP/s",
        gflops(median),
        gflops(min)
    );
}

fn bench_shape(label: &str, shape: AttentionShape, dropout: Option<&Dropout>, iters: usize) {
    let AttentionShape {
        batch: b,
        seq: t,
        prefix: p,
        heads: nh,
        head_dim: hd,
    } = shape;
    let h = nh * hd;
    let n = p + t;
    let mut qkv = vec![0.0f32; b * t * 3 * h];
    let mut prefix_kv = vec![0.0f32; b * p * 2 * h];
    let mut dctx = vec![0.0f32; b * t * h];
    fill(&mut qkv, 1);
    fill(&mut prefix_kv, 2);
    fill(&mut dctx, 3);
    let key_mask = vec![1.0f32; b * t];
    let mut probs = vec![0.0f32; b * nh * t * n];
    let mut ctx = vec![0.0f32; b * t * h];
    let mut dqkv = vec![0.0f32; b * t * 3 * h];
    let mut dprefix = vec![0.0f32; b * p * 2 * h];

    // One T×N×HD product, in flops.
    let prod = 2.0 * (b * nh * t * n * hd) as f64;
    let tag = if dropout.is_some() { " +dropout" } else { "" };

    let ms = median_ms(iters, || {
        attention_forward(
            shape,
            &qkv,
            &prefix_kv,
            &key_mask,
            dropout,
            Some(&mut probs),
            &mut ctx,
        );
    });
    report(
        &format!("{label} forward (save probs){tag}"),
        ms,
        2.0 * prod,
    );
    let ms = median_ms(iters, || {
        attention_forward(shape, &qkv, &prefix_kv, &key_mask, dropout, None, &mut ctx);
    });
    report(&format!("{label} forward (inference){tag}"), ms, 2.0 * prod);

    attention_forward(
        shape,
        &qkv,
        &prefix_kv,
        &key_mask,
        dropout,
        Some(&mut probs),
        &mut ctx,
    );
    let ms = median_ms(iters, || {
        attention_backward(
            shape,
            &qkv,
            &prefix_kv,
            &key_mask,
            dropout,
            &probs,
            &dctx,
            Some(&mut dqkv),
            &mut dprefix,
        );
    });
    report(
        &format!("{label} backward (dqkv + dprefix){tag}"),
        ms,
        4.0 * prod,
    );
    let ms = median_ms(iters, || {
        attention_backward(
            shape,
            &qkv,
            &prefix_kv,
            &key_mask,
            dropout,
            &probs,
            &dctx,
            None,
            &mut dprefix,
        );
    });
    // dA' over all keys, then dK and dV of the P prefix keys only.
    let prefix_flops = prod + 2.0 * 2.0 * (b * nh * t * p * hd) as f64;
    report(
        &format!("{label} backward (dprefix only){tag}"),
        ms,
        prefix_flops,
    );
}

fn main() {
    let iters = std::env::var("ATTN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    println!("threads: {}", rayon::current_num_threads());
    let minilm = AttentionShape {
        batch: 16,
        seq: 128,
        prefix: 16,
        heads: 12,
        head_dim: 32,
    };
    let base = AttentionShape {
        batch: 16,
        seq: 128,
        prefix: 16,
        heads: 12,
        head_dim: 64,
    };
    let drop = Dropout {
        p: 0.1,
        seed: 7,
        stream: 3,
    };
    bench_shape("minilm", minilm, None, iters);
    bench_shape("minilm", minilm, Some(&drop), iters);
    bench_shape("bert-base", base, None, iters);
}
