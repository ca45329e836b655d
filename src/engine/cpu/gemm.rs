//! Matrix products. Weights are row-major [out, in], as HF stores them.
//!
//! Every product goes through `gemm::gemm` with explicit strides: a transposed
//! operand is a stride swap, never a copy. `gemm` computes
//! `dst := alpha·dst + beta·lhs·rhs` (dst read only when `read_dst`), and
//! internally flips a row-major problem into its column-major transpose
//! (yᵀ = w·xᵀ), which is the layout its AVX-512 microkernel wants; so there is
//! nothing to gain by transposing by hand (measured: see benches/kernels.rs).
//!
//! Measured on the 2-core Zen 5 (AVX-512, 2×512-bit FMA): ~250-265 GFLOP/s
//! per core and 460-520 GFLOP/s on both, i.e. ~95% of twice the one-core rate,
//! for all four MiniLM shapes, forward and backward-input. Alternatives tried
//! (`cargo bench --bench kernels -- explore`): computing yᵀ = w·xᵀ by hand (same,
//! or 15% slower for ffn-down), rayon over row blocks with a single-threaded
//! gemm each (same at 1024-row blocks, 5-25% slower at 256-512), bias pre-fill.
//!
//! Linear layer, forward and backward side by side (x [M,K], w [N,K], y [M,N]):
//!   forward          y  = x · wᵀ + b        lhs x (rs K, cs 1), rhs wᵀ (rs 1, cs K)
//!   backward input   dx = dy · w            lhs dy (rs N, cs 1), rhs w (rs K, cs 1)
//!   backward params  dw += dyᵀ · x          lhs dyᵀ (rs 1, cs N), rhs x (rs K, cs 1)
//!                    db += Σ_rows dy

use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds (m·n·k) a product runs on the calling thread.
/// Measured on the 2-core Zen 5 (benches/kernels.rs `explore`): at 4.2 M FMA
/// (256·256·64) one thread is faster (32 µs vs 36-45 µs forked), at 8.4 M
/// (256·256·128, 512·128·128) the pool wins 1.6× (40 µs vs 64 µs); at 6.3 M it
/// depends on the shape. gemm's own threshold (48·48·256 per block) forks too
/// early for 2 cores.
pub const PARALLEL_THRESHOLD: usize = 6 << 20;

/// Parallelism for an m·n·k product: the whole rayon pool for big products,
/// none for small ones or when already running inside a rayon worker (the
/// caller is then parallel over something else, e.g. attention heads).
fn parallelism(m: usize, n: usize, k: usize, parallel: bool) -> Parallelism {
    let work = m.saturating_mul(n).saturating_mul(k);
    if parallel && work >= PARALLEL_THRESHOLD && rayon::current_thread_index().is_none() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// Index of the last element of a strided [rows, cols] view, or None if empty.
fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        None
    } else {
        Some((rows - 1) * rs + (cols - 1) * cs)
    }
}

/// General strided product, the building block of every matmul in the engine:
///
/// dst[M,N] = scale · lhs[M,K] · rhs[K,N]   (+ dst when `accumulate`)
///
/// Element (i, j) of a view with strides (rs, cs) lives at `i·rs + j·cs` of its
/// slice, so a transposed operand is the same slice with rs and cs swapped.
/// `parallel` lets big products use the rayon pool (ignored inside a rayon
/// worker, see [`PARALLEL_THRESHOLD`]). Panics if a view does not fit its slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let Some(last_dst) = last_index(m, n, dst_rs, dst_cs) else {
        return;
    };
    assert!(
        last_dst < dst.len(),
        "matmul: dst view [{m},{n}] does not fit"
    );
    if k == 0 {
        // Empty sum: dst = 0 (or unchanged when accumulating).
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    let last_lhs = last_index(m, k, lhs_rs, lhs_cs).unwrap();
    let last_rhs = last_index(k, n, rhs_rs, rhs_cs).unwrap();
    assert!(
        last_lhs < lhs.len(),
        "matmul: lhs view [{m},{k}] does not fit"
    );
    assert!(
        last_rhs < rhs.len(),
        "matmul: rhs view [{k},{n}] does not fit"
    );
    let par = parallelism(m, n, k, parallel);
    // SAFETY: all three views were bounds-checked above (strides are
    // non-negative, so the last element is the farthest one); dst is a unique
    // borrow, so it cannot overlap lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// y[M,N] = x[M,K] · w[N,K]ᵀ + bias[N] (bias optional). Overwrites y.
///
/// The bias is added after the product in one parallel pass over y. Measured
/// against pre-filling y with the broadcast bias and letting gemm accumulate
/// (read_dst): equal or faster at every MiniLM shape (ffn-up 5.03 vs 5.19 ms,
/// qkv 7.6 vs 8.1 ms single-threaded), since the prefill is a full extra write
/// of y and the microkernel's read of dst is not free either.
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "linear_forward: x is not [M,K]");
    assert_eq!(w.len(), n * k, "linear_forward: w is not [N,K]");
    assert_eq!(y.len(), m * n, "linear_forward: y is not [M,N]");
    // y = x · wᵀ: wᵀ[K,N] has (rs, cs) = (1, K).
    matmul(m, n, k, y, n, 1, x, k, 1, w, 1, k, false, 1.0, true);
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear_forward: bias is not [N]");
        add_bias_rows(y, b);
    }
}

/// y[M,N] += b[N] on every row; parallel over row blocks for big y.
pub fn add_bias_rows(y: &mut [f32], b: &[f32]) {
    let n = b.len();
    if n == 0 {
        return;
    }
    let add = |rows: &mut [f32]| {
        for row in rows.chunks_exact_mut(n) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    };
    let rows_per_task = (1 << 15) / n + 1;
    if y.len() >= 1 << 17 && rayon::current_thread_index().is_none() {
        y.par_chunks_mut(rows_per_task * n).for_each(add);
    } else {
        add(y);
    }
}

/// dx[M,K] (+)= dy[M,N] · w[N,K]. Accumulates into dx when `accumulate`.
pub fn linear_backward_input(
    dy: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dy.len(), m * n, "linear_backward_input: dy is not [M,N]");
    assert_eq!(w.len(), n * k, "linear_backward_input: w is not [N,K]");
    assert_eq!(dx.len(), m * k, "linear_backward_input: dx is not [M,K]");
    // dx[M,K] = dy[M,N] · w[N,K], both row-major.
    matmul(m, k, n, dx, k, 1, dy, n, 1, w, k, 1, accumulate, 1.0, true);
}

/// Gradients of a trainable linear layer: dw[N,K] += dy[M,N]ᵀ · x[M,K], db[N] += Σ_rows dy.
pub fn linear_backward_params(
    x: &[f32],
    dy: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    assert_eq!(x.len(), m * k, "linear_backward_params: x is not [M,K]");
    assert_eq!(dy.len(), m * n, "linear_backward_params: dy is not [M,N]");
    assert_eq!(dw.len(), n * k, "linear_backward_params: dw is not [N,K]");
    // dw[N,K] += dyᵀ[N,M] · x[M,K]; dyᵀ has (rs, cs) = (1, N).
    matmul(n, k, m, dw, k, 1, dy, 1, n, x, k, 1, true, 1.0, true);
    if let Some(db) = db {
        assert_eq!(db.len(), n, "linear_backward_params: db is not [N]");
        // Column sums, row by row so the inner loop is a contiguous vector add.
        for row in dy.chunks_exact(n) {
            for (d, &g) in db.iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) from the crate's generator.
    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0; len];
        crate::rng::Rng::new(seed).fill_uniform(&mut v, 1.0);
        v
    }

    /// f64 reference of y = x·wᵀ + b at one entry.
    fn ref_linear(x: &[f32], w: &[f32], b: Option<&[f32]>, k: usize, i: usize, j: usize) -> f64 {
        let mut acc = b.map_or(0.0, |b| b[j] as f64);
        for p in 0..k {
            acc += x[i * k + p] as f64 * w[j * k + p] as f64;
        }
        acc
    }

    /// |a - b| within f32 rounding of a dot product of length k with entries ≤ 1.
    fn close(a: f32, b: f64, k: usize) -> bool {
        (a as f64 - b).abs() <= 1e-6 * (k as f64) + 1e-5 * b.abs()
    }

    #[test]
    fn linear_forward_odd_shape_matches_f64() {
        let (m, n, k) = (7, 13, 33);
        let x = rand_vec(m * k, 1);
        let w = rand_vec(n * k, 2);
        let b = rand_vec(n, 3);
        let mut y = vec![f32::NAN; m * n];
        linear_forward(&x, &w, Some(&b), m, n, k, &mut y);
        for i in 0..m {
            for j in 0..n {
                let r = ref_linear(&x, &w, Some(&b), k, i, j);
                assert!(
                    close(y[i * n + j], r, k),
                    "({i},{j}) {} vs {r}",
                    y[i * n + j]
                );
            }
        }
        // Without bias.
        linear_forward(&x, &w, None, m, n, k, &mut y);
        for i in 0..m {
            for j in 0..n {
                let r = ref_linear(&x, &w, None, k, i, j);
                assert!(close(y[i * n + j], r, k));
            }
        }
    }

    #[test]
    fn linear_forward_large_sampled() {
        // The MiniLM FFN-up shape, parallel path; check a few sampled entries.
        let (m, n, k) = (2048, 1536, 384);
        let x = rand_vec(m * k, 4);
        let w = rand_vec(n * k, 5);
        let b = rand_vec(n, 6);
        let mut y = vec![f32::NAN; m * n];
        linear_forward(&x, &w, Some(&b), m, n, k, &mut y);
        for s in 0..64usize {
            let i = (s * 977 + 5) % m;
            let j = (s * 331 + 11) % n;
            let r = ref_linear(&x, &w, Some(&b), k, i, j);
            assert!(
                close(y[i * n + j], r, k),
                "({i},{j}) {} vs {r}",
                y[i * n + j]
            );
        }
        // Corners (edge tiles of the microkernel).
        for &(i, j) in &[(0, 0), (m - 1, n - 1), (0, n - 1), (m - 1, 0)] {
            assert!(close(
                y[i * n + j],
                ref_linear(&x, &w, Some(&b), k, i, j),
                k
            ));
        }
    }

    #[test]
    fn linear_backward_input_matches_f64() {
        for &(m, n, k) in &[(7, 13, 33), (2048, 384, 1536)] {
            let dy = rand_vec(m * n, 7);
            let w = rand_vec(n * k, 8);
            let init = rand_vec(m * k, 9);
            let mut dx = init.clone();
            linear_backward_input(&dy, &w, m, n, k, &mut dx, false);
            let mut dx_acc = init.clone();
            linear_backward_input(&dy, &w, m, n, k, &mut dx_acc, true);
            let samples: Vec<(usize, usize)> = if m * k < 10_000 {
                (0..m).flat_map(|i| (0..k).map(move |p| (i, p))).collect()
            } else {
                (0..64)
                    .map(|s| ((s * 977 + 3) % m, (s * 331 + 7) % k))
                    .collect()
            };
            for (i, p) in samples {
                let mut r = 0.0f64;
                for j in 0..n {
                    r += dy[i * n + j] as f64 * w[j * k + p] as f64;
                }
                assert!(
                    close(dx[i * k + p], r, n),
                    "({i},{p}) {} vs {r}",
                    dx[i * k + p]
                );
                let ra = r + init[i * k + p] as f64;
                assert!(close(dx_acc[i * k + p], ra, n));
            }
        }
    }

    #[test]
    fn linear_backward_params_matches_f64() {
        let (m, n, k) = (7, 13, 33);
        let x = rand_vec(m * k, 10);
        let dy = rand_vec(m * n, 11);
        let dw0 = rand_vec(n * k, 12);
        let db0 = rand_vec(n, 13);
        let mut dw = dw0.clone();
        let mut db = db0.clone();
        linear_backward_params(&x, &dy, m, n, k, &mut dw, Some(&mut db));
        for j in 0..n {
            for p in 0..k {
                let mut r = dw0[j * k + p] as f64;
                for i in 0..m {
                    r += dy[i * n + j] as f64 * x[i * k + p] as f64;
                }
                assert!(close(dw[j * k + p], r, m), "({j},{p})");
            }
            let r: f64 = db0[j] as f64 + (0..m).map(|i| dy[i * n + j] as f64).sum::<f64>();
            assert!(close(db[j], r, m));
        }
    }

    #[test]
    fn linear_backward_params_large_sampled() {
        // Prefix/head-sized reduction over all 2048 rows, parallel path.
        let (m, n, k) = (2048, 384, 384);
        let x = rand_vec(m * k, 14);
        let dy = rand_vec(m * n, 15);
        let mut dw = vec![0.0; n * k];
        linear_backward_params(&x, &dy, m, n, k, &mut dw, None);
        for s in 0..64usize {
            let (j, p) = ((s * 131 + 1) % n, (s * 71 + 2) % k);
            let r: f64 = (0..m)
                .map(|i| dy[i * n + j] as f64 * x[i * k + p] as f64)
                .sum();
            assert!(
                close(dw[j * k + p], r, m),
                "({j},{p}) {} vs {r}",
                dw[j * k + p]
            );
        }
    }

    #[test]
    fn matmul_strided_views_and_scale() {
        // dst is a [5,6] window (column-major, padded) inside a bigger buffer;
        // lhs is the transpose of a [9,5] row-major matrix; rhs is every other
        // column of a [9,12] matrix.
        let (m, n, k) = (5, 6, 9);
        let a = rand_vec(k * m, 16); // [K,M] row-major → lhs = aᵀ
        let b = rand_vec(k * 12, 17); // [K,12]
        let dst_rs = 1;
        let dst_cs = 8; // column-major, leading dimension 8
        let init = rand_vec(8 * n, 18);
        for &accumulate in &[false, true] {
            let mut dst = init.clone();
            matmul(
                m, n, k, &mut dst, dst_rs, dst_cs, &a, 1, m, &b, 12, 2, accumulate, 0.5, false,
            );
            for i in 0..m {
                for j in 0..n {
                    let mut r = 0.0f64;
                    for p in 0..k {
                        r += a[p * m + i] as f64 * b[p * 12 + 2 * j] as f64;
                    }
                    r *= 0.5;
                    if accumulate {
                        r += init[i + 8 * j] as f64;
                    }
                    assert!(close(dst[i + 8 * j], r, k), "acc={accumulate} ({i},{j})");
                }
            }
            // The padding rows of each column are untouched.
            for j in 0..n {
                for pad in m..8 {
                    assert_eq!(dst[pad + 8 * j], init[pad + 8 * j]);
                }
            }
        }
    }

    #[test]
    fn matmul_k_zero_is_zero_or_unchanged() {
        let mut dst = vec![3.0f32; 6];
        matmul(
            2,
            3,
            0,
            &mut dst,
            3,
            1,
            &[],
            0,
            1,
            &[],
            3,
            1,
            true,
            1.0,
            true,
        );
        assert!(dst.iter().all(|&v| v == 3.0));
        matmul(
            2,
            3,
            0,
            &mut dst,
            3,
            1,
            &[],
            0,
            1,
            &[],
            3,
            1,
            false,
            1.0,
            true,
        );
        assert!(dst.iter().all(|&v| v == 0.0));
    }

    #[test]
    #[should_panic]
    fn matmul_rejects_view_out_of_bounds() {
        let mut dst = vec![0.0f32; 6];
        let lhs = vec![0.0f32; 5]; // needs 2·3 = 6
        let rhs = vec![0.0f32; 9];
        matmul(
            2, 3, 3, &mut dst, 3, 1, &lhs, 3, 1, &rhs, 3, 1, false, 1.0, false,
        );
    }

    #[test]
    fn inside_rayon_worker_is_correct() {
        // Nested call from a rayon worker takes the single-threaded path.
        let (m, n, k) = (256, 192, 128);
        let x = rand_vec(m * k, 19);
        let w = rand_vec(n * k, 20);
        let mut y_outer = vec![0.0; m * n];
        linear_forward(&x, &w, None, m, n, k, &mut y_outer);
        let ys: Vec<Vec<f32>> = (0..2)
            .into_par_iter()
            .map(|_| {
                let mut y = vec![0.0; m * n];
                linear_forward(&x, &w, None, m, n, k, &mut y);
                y
            })
            .collect();
        for y in ys {
            for (a, b) in y.iter().zip(&y_outer) {
                assert!((a - b).abs() <= 1e-4);
            }
        }
    }
}
