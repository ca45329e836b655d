//! LayerNorm over rows of width H, fused with the bias, dropout and residual add
//! that precede it in every BERT sub-layer.
//!
//! Forward and backward side by side, per row of width H (x̂ = (x - μ)·rstd):
//!   bias_dropout_residual   h  = drop(h + b) + r        backward: dh = drop(dy), dr = dy
//!                                                       (the caller applies Dropout::apply)
//!   layernorm_forward       μ  = Σx / H,  σ² = Σ(x - μ)² / H (biased, as torch)
//!                           rstd = 1/√(σ² + eps),  y = x̂·γ + β
//!   layernorm_backward      g  = dy·γ
//!                           dx = rstd · (g - mean(g) - x̂ · mean(g·x̂))
//!
//! Rows are independent: each kernel is a rayon loop over blocks of rows. The
//! inner loops are slice zips (no bounds checks); reductions keep 16 partial
//! sums so LLVM can vectorise them without reassociating f32 adds, which also
//! makes them more accurate than one running sum.

use super::dropout::{Dropout, Mask};
use super::gelu::multiversion;
use rayon::prelude::*;

/// Elements per rayon task: big enough to amortise the fork, small enough to
/// give both cores several tasks at M = 2048 rows.
const TASK_ELEMS: usize = 1 << 14;

/// Rows per rayon task for rows of width `h`.
fn rows_per_task(h: usize) -> usize {
    (TASK_ELEMS / h.max(1)).max(1)
}

/// Whether a kernel over `len` elements should fork onto the rayon pool.
fn go_parallel(len: usize) -> bool {
    len >= 2 * TASK_ELEMS && rayon::current_thread_index().is_none()
}

/// Σ x, with 16 independent partial sums (one AVX-512 register).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut s = tail.iter().sum::<f32>();
    for a in acc {
        s += a;
    }
    s
}

/// Σ (x - c)², 16 partial sums.
#[inline(always)]
fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            let d = v - c;
            *a += d * d;
        }
    }
    let mut s = tail.iter().map(|&v| (v - c) * (v - c)).sum::<f32>();
    for a in acc {
        s += a;
    }
    s
}

/// Σ a·b, 16 partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let mut s: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| x * y)
        .sum();
    for (ca, cb) in ac.zip(bc) {
        for ((acc, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += x * y;
        }
    }
    for v in acc {
        s += v;
    }
    s
}

/// Σ a·b·(x - c), 16 partial sums. Kept as (x - c) rather than expanded into
/// Σ a·b·x − c·Σ a·b, which cancels badly when |mean| ≫ std.
#[inline(always)]
fn dot_dev(a: &[f32], b: &[f32], x: &[f32], c: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, bc, xc) = (a.chunks_exact(16), b.chunks_exact(16), x.chunks_exact(16));
    let mut s: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .zip(xc.remainder())
        .map(|((&p, &q), &v)| p * q * (v - c))
        .sum();
    for ((ca, cb), cx) in ac.zip(bc).zip(xc) {
        for (((acc, &p), &q), &v) in acc.iter_mut().zip(ca).zip(cb).zip(cx) {
            *acc += p * q * (v - c);
        }
    }
    for v in acc {
        s += v;
    }
    s
}

multiversion! {
    /// bias_dropout_residual over a block of whole rows starting at flat element `start`.
    fn bias_dropout_residual_block(hs: &mut [f32], rs: &[f32], bias: &[f32], mask: Option<&Mask>, start: usize) {
        let hd = bias.len();
        match mask {
            Some(mask) => {
                let scale = mask.scale();
                // Flat index = start + position in the block; the counter steps by
                // a constant per element (no 64-bit multiply in the loop).
                let mut z = mask.counter(start as u64);
                for (hrow, rrow) in hs.chunks_exact_mut(hd).zip(rs.chunks_exact(hd)) {
                    for ((v, &b), &res) in hrow.iter_mut().zip(bias).zip(rrow) {
                        let t = *v + b;
                        let kept = mask.keep_counter(z);
                        z = z.wrapping_add(Mask::COUNTER_STEP);
                        *v = if kept { t * scale } else { 0.0 } + res;
                    }
                }
            }
            None => {
                for (hrow, rrow) in hs.chunks_exact_mut(hd).zip(rs.chunks_exact(hd)) {
                    for ((v, &b), &res) in hrow.iter_mut().zip(bias).zip(rrow) {
                        *v = *v + b + res;
                    }
                }
            }
        }
    }
}

/// h[M,H] = dropout(h + bias) + residual, in place: the input of the LayerNorm.
///
/// H = bias.len(). The dropout counter of element (i, j) is its flat index
/// i·H + j, so the caller's backward is `dropout.apply(dh, 0)` on the gradient
/// flowing into h (the residual branch gets dy unchanged).
pub fn bias_dropout_residual(
    h: &mut [f32],
    bias: &[f32],
    dropout: Option<&Dropout>,
    residual: &[f32],
) {
    let hd = bias.len();
    assert!(
        hd > 0 && h.len().is_multiple_of(hd),
        "bias_dropout_residual: h is not [M, {hd}]"
    );
    assert_eq!(
        h.len(),
        residual.len(),
        "bias_dropout_residual: residual shape"
    );
    let mask = dropout.filter(|d| d.p > 0.0).map(|d| d.mask());
    if go_parallel(h.len()) {
        let step = rows_per_task(hd) * hd;
        h.par_chunks_mut(step)
            .zip(residual.par_chunks(step))
            .enumerate()
            .for_each(|(t, (hs, rs))| {
                bias_dropout_residual_block(hs, rs, bias, mask.as_ref(), t * step)
            });
    } else {
        bias_dropout_residual_block(h, residual, bias, mask.as_ref(), 0);
    }
}

multiversion! {
    /// LayerNorm forward over a block of whole rows: two-pass mean / variance
    /// (no catastrophic cancellation), then the affine map in one fused pass.
    fn layernorm_forward_block(xs: &[f32], gamma: &[f32], beta: &[f32], eps: f32, ys: &mut [f32], ss: &mut [f32]) {
        let hd = gamma.len();
        let inv_h = 1.0 / hd as f32;
        for ((xr, yr), st) in xs.chunks_exact(hd).zip(ys.chunks_exact_mut(hd)).zip(ss.chunks_exact_mut(2)) {
            let mean = sum(xr) * inv_h;
            let var = sum_sq_dev(xr, mean) * inv_h;
            let rstd = 1.0 / (var + eps).sqrt();
            for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                *o = (v - mean) * rstd * g + b;
            }
            st[0] = mean;
            st[1] = rstd;
        }
    }
}

/// y = (x - mean) * rstd * gamma + beta per row. Writes (mean, rstd) per row into
/// stats [M, 2] when given (training), so the backward need not recompute them.
pub fn layernorm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    stats: Option<&mut [f32]>,
) {
    let hd = gamma.len();
    assert!(
        hd > 0 && x.len().is_multiple_of(hd),
        "layernorm_forward: x is not [M, {hd}]"
    );
    assert_eq!(beta.len(), hd, "layernorm_forward: beta shape");
    assert_eq!(y.len(), x.len(), "layernorm_forward: y shape");
    let m = x.len() / hd;
    let mut scratch;
    let stats: &mut [f32] = match stats {
        Some(s) => {
            assert_eq!(s.len(), 2 * m, "layernorm_forward: stats is not [M, 2]");
            s
        }
        None => {
            scratch = vec![0.0f32; 2 * m];
            &mut scratch
        }
    };
    let rpt = rows_per_task(hd);
    if go_parallel(x.len()) {
        x.par_chunks(rpt * hd)
            .zip(y.par_chunks_mut(rpt * hd))
            .zip(stats.par_chunks_mut(rpt * 2))
            .for_each(|((xs, ys), ss)| layernorm_forward_block(xs, gamma, beta, eps, ys, ss));
    } else {
        layernorm_forward_block(x, gamma, beta, eps, y, stats);
    }
}

multiversion! {
    /// LayerNorm backward over a block of whole rows.
    fn layernorm_backward_block(dys: &[f32], xs: &[f32], gamma: &[f32], ss: &[f32], dxs: &mut [f32]) {
        let hd = gamma.len();
        let inv_h = 1.0 / hd as f32;
        for (((dyr, xr), st), dxr) in
            dys.chunks_exact(hd).zip(xs.chunks_exact(hd)).zip(ss.chunks_exact(2)).zip(dxs.chunks_exact_mut(hd))
        {
            let (mean, rstd) = (st[0], st[1]);
            // mean(g) and mean(g·x̂) with g = dy·γ: two passes over an L1-resident row,
            // each a single-accumulator reduction that LLVM vectorises cleanly.
            let mean_g = dot(dyr, gamma) * inv_h;
            let mean_gx = dot_dev(dyr, gamma, xr, mean) * rstd * inv_h;
            for (((o, &d), &v), &g) in dxr.iter_mut().zip(dyr).zip(xr).zip(gamma) {
                let xhat = (v - mean) * rstd;
                *o = rstd * (d * g - mean_g - xhat * mean_gx);
            }
        }
    }
}

/// dx[M,H] = ∂LN/∂x · dy, from the saved x and stats. Overwrites dx. No dgamma or
/// dbeta: the LayerNorm is frozen.
pub fn layernorm_backward(dy: &[f32], x: &[f32], gamma: &[f32], stats: &[f32], dx: &mut [f32]) {
    let hd = gamma.len();
    assert!(
        hd > 0 && x.len().is_multiple_of(hd),
        "layernorm_backward: x is not [M, {hd}]"
    );
    assert_eq!(dy.len(), x.len(), "layernorm_backward: dy shape");
    assert_eq!(dx.len(), x.len(), "layernorm_backward: dx shape");
    let m = x.len() / hd;
    assert_eq!(
        stats.len(),
        2 * m,
        "layernorm_backward: stats is not [M, 2]"
    );
    let rpt = rows_per_task(hd);
    if go_parallel(x.len()) {
        dy.par_chunks(rpt * hd)
            .zip(x.par_chunks(rpt * hd))
            .zip(stats.par_chunks(rpt * 2))
            .zip(dx.par_chunks_mut(rpt * hd))
            .for_each(|(((dys, xs), ss), dxs)| layernorm_backward_block(dys, xs, gamma, ss, dxs));
    } else {
        layernorm_backward_block(dy, x, gamma, stats, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [shift - scale, shift + scale).
    fn rand_vec(len: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
        let mut v = vec![0.0; len];
        crate::rng::Rng::new(seed).fill_uniform(&mut v, scale as f64);
        v.iter_mut().for_each(|x| *x += shift);
        v
    }

    /// f64 LayerNorm of one row: (y, mean, rstd).
    fn ln_row_f64(x: &[f32], g: &[f32], b: &[f32], eps: f64) -> (Vec<f64>, f64, f64) {
        let h = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / h;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h;
        let rstd = 1.0 / (var + eps).sqrt();
        let y = x
            .iter()
            .zip(g)
            .zip(b)
            .map(|((&v, &gg), &bb)| (v as f64 - mean) * rstd * gg as f64 + bb as f64)
            .collect();
        (y, mean, rstd)
    }

    /// dx of one row through the explicit Jacobian
    /// ∂y_j/∂x_i = γ_j·rstd·(δ_ij − 1/H − x̂_i·x̂_j/H), all in f64.
    fn ln_backward_row_f64(dy: &[f32], x: &[f32], g: &[f32], eps: f64) -> Vec<f64> {
        let hd = x.len();
        let h = hd as f64;
        let (_, mean, rstd) = ln_row_f64(x, g, g, eps);
        let xhat: Vec<f64> = x.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        (0..hd)
            .map(|i| {
                (0..hd)
                    .map(|j| {
                        let delta = if i == j { 1.0 } else { 0.0 };
                        dy[j] as f64
                            * g[j] as f64
                            * rstd
                            * (delta - 1.0 / h - xhat[i] * xhat[j] / h)
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn forward_matches_f64_odd_and_large_shapes() {
        // (7, 33): serial path; (203, 384): parallel path, ragged last task.
        // The shift of 100 checks the two-pass variance against cancellation.
        for &(m, hd, shift) in &[(7usize, 33usize, 0.0f32), (203, 384, 100.0)] {
            let x = rand_vec(m * hd, 1, 2.0, shift);
            let g = rand_vec(hd, 2, 0.5, 1.0);
            let b = rand_vec(hd, 3, 0.5, 0.0);
            let eps = 1e-12;
            let mut y = vec![f32::NAN; m * hd];
            let mut stats = vec![f32::NAN; 2 * m];
            layernorm_forward(&x, &g, &b, eps, &mut y, Some(&mut stats));
            let mut y2 = vec![f32::NAN; m * hd];
            layernorm_forward(&x, &g, &b, eps, &mut y2, None);
            assert_eq!(y, y2);
            for i in 0..m {
                let (yr, mean, rstd) = ln_row_f64(&x[i * hd..(i + 1) * hd], &g, &b, eps as f64);
                assert!((stats[2 * i] as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0));
                assert!((stats[2 * i + 1] as f64 - rstd).abs() <= 1e-5 * rstd);
                for j in 0..hd {
                    let e = (y[i * hd + j] as f64 - yr[j]).abs();
                    // Relative to shift: x − mean loses log2(100/2) bits of x's f32 precision.
                    assert!(e <= 2e-5 * (1.0 + shift as f64 / 2.0), "({i},{j}) err {e}");
                }
            }
        }
    }

    #[test]
    fn backward_matches_f64_jacobian() {
        for &(m, hd) in &[(7usize, 33usize), (90, 384)] {
            let x = rand_vec(m * hd, 4, 1.5, 0.3);
            let g = rand_vec(hd, 5, 0.5, 1.0);
            let b = vec![0.0; hd];
            let dy = rand_vec(m * hd, 6, 1.0, 0.0);
            let eps = 1e-5;
            let mut y = vec![0.0; m * hd];
            let mut stats = vec![0.0; 2 * m];
            layernorm_forward(&x, &g, &b, eps, &mut y, Some(&mut stats));
            let mut dx = vec![f32::NAN; m * hd];
            layernorm_backward(&dy, &x, &g, &stats, &mut dx);
            for i in 0..m {
                let r = &x[i * hd..(i + 1) * hd];
                let dref = ln_backward_row_f64(&dy[i * hd..(i + 1) * hd], r, &g, eps as f64);
                let scale = dref.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                for j in 0..hd {
                    let e = (dx[i * hd + j] as f64 - dref[j]).abs();
                    assert!(
                        e <= 1e-5 * scale,
                        "({i},{j}) {} vs {}",
                        dx[i * hd + j],
                        dref[j]
                    );
                }
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // L = Σ w·LN(x); central differences of the f32 forward kernel.
        let (m, hd) = (3, 33);
        let x = rand_vec(m * hd, 7, 1.0, 0.0);
        let g = rand_vec(hd, 8, 0.5, 1.0);
        let b = rand_vec(hd, 9, 0.5, 0.0);
        let w = rand_vec(m * hd, 10, 1.0, 0.0);
        let eps = 1e-5;
        let loss = |x: &[f32]| -> f64 {
            let mut y = vec![0.0; m * hd];
            layernorm_forward(x, &g, &b, eps, &mut y, None);
            y.iter().zip(&w).map(|(&a, &c)| a as f64 * c as f64).sum()
        };
        let mut y = vec![0.0; m * hd];
        let mut stats = vec![0.0; 2 * m];
        layernorm_forward(&x, &g, &b, eps, &mut y, Some(&mut stats));
        let mut dx = vec![0.0; m * hd];
        layernorm_backward(&w, &x, &g, &stats, &mut dx);
        let h = 1e-2f32;
        for i in 0..m * hd {
            let mut xp = x.clone();
            xp[i] += h;
            let mut xm = x.clone();
            xm[i] -= h;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * h as f64);
            let rel = (fd - dx[i] as f64).abs() / (dx[i].abs() as f64).max(0.1);
            assert!(rel < 1e-2, "i={i}: fd {fd} vs analytic {}", dx[i]);
        }
    }

    #[test]
    fn bias_dropout_residual_matches_reference() {
        for &(m, hd) in &[(7usize, 33usize), (300, 384)] {
            let h0 = rand_vec(m * hd, 11, 1.0, 0.0);
            let bias = rand_vec(hd, 12, 1.0, 0.0);
            let res = rand_vec(m * hd, 13, 1.0, 0.0);
            let d = Dropout {
                p: 0.1,
                seed: 99,
                stream: 5,
            };
            let scale = 1.0 / (1.0 - 0.1f32);
            let mut h = h0.clone();
            bias_dropout_residual(&mut h, &bias, Some(&d), &res);
            let mut plain = h0.clone();
            bias_dropout_residual(&mut plain, &bias, None, &res);
            let mut p0 = h0.clone();
            bias_dropout_residual(&mut p0, &bias, Some(&Dropout { p: 0.0, ..d }), &res);
            assert_eq!(plain, p0);
            for i in 0..m {
                for (j, &b) in bias.iter().enumerate() {
                    let k = i * hd + j;
                    let t = h0[k] + b;
                    let dropped = if d.keep(k as u64) { t * scale } else { 0.0 };
                    assert_eq!(h[k], dropped + res[k], "({i},{j})");
                    assert_eq!(plain[k], t + res[k]);
                }
            }
        }
    }

    #[test]
    fn bias_dropout_residual_mask_is_dropout_apply() {
        // The backward (Dropout::apply on dh at offset 0) must see the same mask,
        // whatever the thread count.
        let (m, hd) = (256, 384);
        let d = Dropout {
            p: 0.25,
            seed: 1,
            stream: 17,
        };
        let mut h = vec![1.0f32; m * hd];
        bias_dropout_residual(&mut h, &vec![0.0; hd], Some(&d), &vec![0.0; m * hd]);
        let mut g = vec![1.0f32; m * hd];
        d.apply(&mut g, 0);
        assert_eq!(h, g);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut h1 = vec![1.0f32; m * hd];
        pool.install(|| {
            bias_dropout_residual(&mut h1, &vec![0.0; hd], Some(&d), &vec![0.0; m * hd])
        });
        assert_eq!(h, h1);
    }
}
