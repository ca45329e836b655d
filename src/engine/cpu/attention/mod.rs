//! Self-attention with a deep prompt: every row attends to P prefix keys and
//! values, always visible, followed by the T token keys under the padding mask.
//!
//! How it is computed. The work splits into B·NH independent (batch row, head)
//! tasks, run in parallel with rayon; inside a task everything is single
//! threaded and stays in L1/L2 (MiniLM: Q [128,32], K/V [144,32], one
//! [128,144] score block of 72 KiB). Per task, with N = P + T keys:
//!
//! - forward:  S = Q·Kᵀ [T,N] (K gathered transposed to Kᵀ [HD,N]), row softmax
//!   of S/√HD + mask (written straight into the saved `probs` block when
//!   training), A' = dropout(probs) (a copy, since `probs` is saved before
//!   dropout), ctx = A'·V [T,HD] (V gathered to [N,HD]).
//! - backward: dA' = dctx·Vᵀ, dS = probs ⊙ (dA − rowsum(dA ⊙ probs))/√HD with
//!   dA = dropout(dA'), then dQ = dS·K, dK = dSᵀ·Q, dV = A'ᵀ·dctx. Without
//!   dqkv (the lowest prefixed layer) only dA', dS and the P prefix rows of dK
//!   and dV are computed.
//!
//! All six products are one primitive of kernels.rs, C[M,N] = A[M,K]·B[K,N]
//! with A strided in both directions (so Aᵀ is free) and B rows contiguous,
//! computed by a
//! register-blocked AVX-512 micro-kernel (8×48 or 6×64 accumulator tiles, masked
//! loads/stores for the ragged edge) when the CPU has AVX-512, by `gemm::gemm`
//! (its AVX2 micro-kernels) when it has AVX2 and FMA, and by plain loops
//! otherwise. Measured at MiniLM sizes on one Zen 5 core: 4.4-4.7 µs per
//! [128,144,32] product (~260 GFLOP/s, ~95% of FMA peak) against 5.0-6.4 µs for
//! `gemm::gemm` with `Parallelism::None` on the same strided views; on a Zen 3
//! pair without AVX-512, `gemm` took a MiniLM layer's attention from 28.9 to
//! 11.3 ms forward and 48.5 to 10.4 ms backward against the plain loops. The
//! softmax and its backward run 4 rows at a time so their reductions overlap,
//! in 16-lane (AVX-512) or 8-lane (AVX2) vectors with a vectorised exp; as a
//! plain loop, the softmax's in-order sum kept it scalar and it took 10.5 % of
//! a MiniLM inference on the Zen 3 pair.
//! Each task also prefetches the next task's strided rows, which the hardware
//! prefetchers miss.
//!
//! Masking follows HF: scores of padded keys get `(1-m)·f32::MIN`
//! added, so their probability is exactly 0 — unless every key of a row is
//! masked (P = 0 and an all-padding row), where all scores round to f32::MIN and
//! the row is uniform, as in HF. Keys after the last real token of a batch row
//! are never computed at all: their probabilities, and the gradients of their K
//! and V, are exactly 0, and skipping them saves the padding's share of the work.

mod kernels;

use super::dropout::Dropout;
use kernels::{
    detect_isa, matmul, softmax_backward_rows, softmax_rows, transpose, Isa, View, ViewMut,
};
use rayon::prelude::*;
use std::cell::Cell;

#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub prefix: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Forward.
/// - qkv [B*T, 3H]: query cols [0,H), key [H,2H), value [2H,3H); head h at h*HD.
/// - prefix_kv [B, P, 2H]: prefix keys cols [0,H), values [H,2H) (after prefix dropout).
/// - key_mask [B, T]: 1.0 for a real token, 0.0 for padding.
/// - probs [B, NH, T, P+T]: softmax(QKᵀ/√HD + mask) before dropout, saved for the backward.
/// - ctx [B*T, H]: dropout(probs) · V, head h at cols h*HD.
///
/// Attention dropout numbers its elements by their flat index into
/// [B, NH, T, P+T], so the backward regenerates the same mask.
pub fn attention_forward(
    shape: AttentionShape,
    qkv: &[f32],
    prefix_kv: &[f32],
    key_mask: &[f32],
    dropout: Option<&Dropout>,
    probs: Option<&mut [f32]>,
    ctx: &mut [f32],
) {
    forward_with(
        detect_isa(),
        shape,
        qkv,
        prefix_kv,
        key_mask,
        dropout,
        probs,
        ctx,
    );
}

/// Backward from dctx [B*T, H]. Writes dprefix_kv [B, P, 2H] and, when given,
/// dqkv [B*T, 3H] (both overwritten). The lowest prefixed layer passes no dqkv.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: AttentionShape,
    qkv: &[f32],
    prefix_kv: &[f32],
    key_mask: &[f32],
    dropout: Option<&Dropout>,
    probs: &[f32],
    dctx: &[f32],
    dqkv: Option<&mut [f32]>,
    dprefix_kv: &mut [f32],
) {
    backward_with(
        detect_isa(),
        shape,
        qkv,
        prefix_kv,
        key_mask,
        dropout,
        probs,
        dctx,
        dqkv,
        dprefix_kv,
    );
}

// ----------------------------------------------------------------------------
// Driver: per-call setup, the (b, h) tasks.

/// What every task of one call shares: shapes, inputs, the per-batch-row mask.
struct Setup<'a> {
    t: usize,
    p: usize,
    nh: usize,
    hd: usize,
    /// H = NH·HD.
    hh: usize,
    /// N = P + T keys.
    n: usize,
    scale: f32,
    isa: Isa,
    qkv: &'a [f32],
    prefix_kv: &'a [f32],
    /// [B, N]: 0 for a visible key, (1 - m)·f32::MIN for a padded one (HF's additive mask).
    bias: Vec<f32>,
    /// [B]: keys [0, n_eff) are computed; all later keys are padding, probability 0.
    n_eff: Vec<usize>,
    dropout: Option<&'a Dropout>,
}

impl<'a> Setup<'a> {
    fn new(
        isa: Isa,
        shape: AttentionShape,
        qkv: &'a [f32],
        prefix_kv: &'a [f32],
        key_mask: &[f32],
        dropout: Option<&'a Dropout>,
    ) -> Self {
        let AttentionShape {
            batch,
            seq: t,
            prefix: p,
            heads: nh,
            head_dim: hd,
        } = shape;
        let hh = nh * hd;
        let n = p + t;
        assert_eq!(qkv.len(), batch * t * 3 * hh, "qkv must be [B*T, 3H]");
        assert_eq!(
            prefix_kv.len(),
            batch * p * 2 * hh,
            "prefix_kv must be [B, P, 2H]"
        );
        assert_eq!(key_mask.len(), batch * t, "key_mask must be [B, T]");
        let mut bias = vec![0.0f32; batch * n];
        let mut n_eff = vec![0usize; batch];
        for b in 0..batch {
            let row = &mut bias[b * n..(b + 1) * n];
            let mut last_visible = None;
            for (j, &m) in key_mask[b * t..(b + 1) * t].iter().enumerate() {
                row[p + j] = (1.0 - m) * f32::MIN;
                if row[p + j] == 0.0 {
                    last_visible = Some(j);
                }
            }
            n_eff[b] = match last_visible {
                Some(j) => p + j + 1,
                // No visible token: the prefix alone, or (P = 0) every key, which
                // then all score f32::MIN and give HF's uniform row.
                None if p > 0 => p,
                None => n,
            };
        }
        Setup {
            t,
            p,
            nh,
            hd,
            hh,
            n,
            scale: 1.0 / (hd as f32).sqrt(),
            isa,
            qkv,
            prefix_kv,
            bias,
            n_eff,
            // p == 0 keeps everything at scale 1: skip the copies and the hashing.
            dropout: dropout.filter(|d| d.p > 0.0),
        }
    }

    /// Key (`which` = 0) or value (1) j ∈ [0, N) of head h in batch row b: [HD].
    fn kv_row(&self, which: usize, b: usize, h: usize, j: usize) -> &[f32] {
        let (hh, hd) = (self.hh, self.hd);
        let at = if j < self.p {
            (b * self.p + j) * 2 * hh + which * hh + h * hd
        } else {
            (b * self.t + j - self.p) * 3 * hh + (1 + which) * hh + h * hd
        };
        if j < self.p {
            &self.prefix_kv[at..at + hd]
        } else {
            &self.qkv[at..at + hd]
        }
    }

    /// dst[j, :] = row j, j < ne: K or V of one head, contiguous [ne, HD].
    fn gather_rows(&self, which: usize, b: usize, h: usize, ne: usize, dst: &mut [f32]) {
        for (j, d) in dst.chunks_exact_mut(self.hd).take(ne).enumerate() {
            d.copy_from_slice(self.kv_row(which, b, h, j));
        }
    }

    /// dst[d, j] = row j's element d, j < ne: K or V of one head transposed,
    /// [HD, ldn] (ldn a multiple of 16; columns [ne, ldn) are scratch).
    fn gather_transposed(
        &self,
        which: usize,
        b: usize,
        h: usize,
        ne: usize,
        ldn: usize,
        dst: &mut [f32],
    ) {
        assert!(ldn.is_multiple_of(16) && ldn >= ne && dst.len() >= self.hd * ldn);
        // SAFETY: kv_row checks every row's bounds; dst holds [HD, ldn].
        unsafe {
            transpose(
                self.isa,
                ne,
                self.hd,
                |j| self.kv_row(which, b, h, j).as_ptr(),
                dst.as_mut_ptr(),
                ldn,
            )
        }
    }

    /// Q of head h, batch row b, as a matrix [T, HD] inside qkv (rows 3H apart).
    fn q_view(&self, b: usize, h: usize) -> View {
        View::rows(
            self.qkv[b * self.t * 3 * self.hh + h * self.hd..].as_ptr(),
            3 * self.hh,
        )
    }

    /// Dropout counter of element (b, h, i, 0) of [B, NH, T, N].
    fn dropout_offset(&self, b: usize, h: usize, i: usize) -> u64 {
        (((b * self.nh + h) * self.t + i) * self.n) as u64
    }

    /// Starts pulling the inputs of task `task` into L2 while the current
    /// task computes. A head's rows are HD floats every 3H (every H for dctx):
    /// the hardware prefetchers do not follow that, and each task would
    /// otherwise begin with ~100 KiB of misses. The backward also reads `dctx`
    /// [B*T, H] and the task's saved `probs` block.
    fn prefetch_task(&self, task: usize, dctx: Option<&[f32]>, probs: Option<&[f32]>) {
        if task >= self.n_eff.len() * self.nh {
            return;
        }
        let (b, h) = (task / self.nh, task % self.nh);
        let (t, p, hh, hd) = (self.t, self.p, self.hh, self.hd);
        for part in 0..3 {
            prefetch_rows(
                &self.qkv[b * t * 3 * hh + part * hh + h * hd..],
                t,
                3 * hh,
                hd,
            );
        }
        if p > 0 {
            for part in 0..2 {
                prefetch_rows(
                    &self.prefix_kv[b * p * 2 * hh + part * hh + h * hd..],
                    p,
                    2 * hh,
                    hd,
                );
            }
        }
        if let Some(d) = dctx {
            prefetch_rows(&d[b * t * hh + h * hd..], t, hh, hd);
        }
        if let Some(pr) = probs {
            let len = t * self.n;
            prefetch_rows(&pr[task * len..], 1, len, len);
        }
    }
}

/// Prefetch hint (to L2) for `rows` rows of `width` floats, `stride` apart,
/// starting at x[0]. The caller keeps every row inside x.
fn prefetch_rows(x: &[f32], rows: usize, stride: usize, width: usize) {
    debug_assert!(rows == 0 || (rows - 1) * stride + width <= x.len());
    #[cfg(target_arch = "x86_64")]
    for r in 0..rows {
        let row = x.as_ptr().wrapping_add(r * stride);
        for l in (0..width).step_by(16) {
            // SAFETY: a prefetch has no architectural effect (it cannot fault).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    row.wrapping_add(l).cast(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, rows, stride, width);
}

/// An output pointer shared by the tasks of one call.
///
/// Soundness: task (b, h) only writes
/// - probs block [(b·NH + h)·T·N, +T·N),
/// - ctx / dqkv rows [b·T, (b+1)·T), the HD columns of head h (in each of the
///   Q, K, V blocks for dqkv),
/// - dprefix_kv rows [b·P, (b+1)·P), the HD columns of head h in the K and V blocks,
///
/// so no two tasks write the same element, and nothing reads these outputs
/// during the call (they are `&mut` borrows, disjoint from every input).
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: see the disjointness invariant above.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    /// A method (not field access) so closures capture the whole Sync wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Per-thread task scratch, reused across calls (a few hundred KiB at most).
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch (stale contents). The
/// buffer is taken out of the thread-local while `f` runs, so a task nested by
/// rayon work stealing on the same thread gets a fresh one instead of aliasing.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.set(buf));
    r
}

#[allow(clippy::too_many_arguments)]
fn forward_with(
    isa: Isa,
    shape: AttentionShape,
    qkv: &[f32],
    prefix_kv: &[f32],
    key_mask: &[f32],
    dropout: Option<&Dropout>,
    probs: Option<&mut [f32]>,
    ctx: &mut [f32],
) {
    let s = Setup::new(isa, shape, qkv, prefix_kv, key_mask, dropout);
    let tasks = shape.batch * s.nh;
    assert_eq!(ctx.len(), shape.batch * s.t * s.hh, "ctx must be [B*T, H]");
    if let Some(pr) = probs.as_ref() {
        assert_eq!(pr.len(), tasks * s.t * s.n, "probs must be [B, NH, T, P+T]");
    }
    if tasks == 0 || s.t == 0 || s.hd == 0 {
        return;
    }
    let probs = probs.map(|p| SharedMut(p.as_mut_ptr()));
    let ctx = SharedMut(ctx.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|task| {
        // SAFETY: the lengths were checked above; task (b, h) writes only its own
        // blocks (see SharedMut).
        unsafe { forward_task(&s, task, probs, ctx) }
    });
}

/// Task (b, h) = (task / NH, task % NH) of the forward.
unsafe fn forward_task(s: &Setup, task: usize, probs: Option<SharedMut>, ctx: SharedMut) {
    let (b, h) = (task / s.nh, task % s.nh);
    s.prefetch_task(task + 1, None, None);
    let (t, n, hd) = (s.t, s.n, s.hd);
    let ne = s.n_eff[b];
    let ldn = ne.next_multiple_of(16);
    let bias = &s.bias[b * n..b * n + ne];
    // The scores live in the saved probs block when there is one, else in
    // scratch; with dropout, A' needs a scratch block besides the saved probs.
    let need_block = probs.is_none() || s.dropout.is_some();
    let len = hd * ldn + ne * hd + if need_block { t * ldn } else { 0 };
    with_scratch(len, |scratch| {
        let (kt, rest) = scratch.split_at_mut(hd * ldn); // Kᵀ [HD, ldn]
        let (v, block) = rest.split_at_mut(ne * hd); // V [ne, HD]
        s.gather_transposed(0, b, h, ne, ldn, kt);
        s.gather_rows(1, b, h, ne, v);

        // S [T, ne] = Q [T,HD] · Kᵀ [HD,ne], rows at `sp` with stride `srs`.
        let (sp, srs) = match probs {
            Some(pr) => (pr.get().add((b * s.nh + h) * t * n), n),
            None => (block.as_mut_ptr(), ldn),
        };
        matmul(
            s.isa,
            t,
            ne,
            hd,
            s.q_view(b, h),
            View::rows(kt.as_ptr(), ldn),
            ViewMut::rows(sp, srs),
        );
        softmax_rows(s.isa, sp, srs, t, ne, bias, s.scale);
        if probs.is_some() && ne < n {
            // Keys after the last real token: exactly 0, as HF's mask gives.
            for i in 0..t {
                std::slice::from_raw_parts_mut(sp.add(i * srs + ne), n - ne).fill(0.0);
            }
        }

        // A' = dropout(probs), numbered by the flat index into [B, NH, T, N].
        let a = match s.dropout {
            None => View::rows(sp, srs),
            Some(d) => {
                for i in 0..t {
                    let dst = &mut block[i * ldn..i * ldn + ne];
                    if probs.is_some() {
                        dst.copy_from_slice(std::slice::from_raw_parts(sp.add(i * srs), ne));
                    }
                    d.apply(dst, s.dropout_offset(b, h, i));
                }
                View::rows(block.as_ptr(), ldn)
            }
        };
        // ctx [T, HD] (rows H apart, head h's columns) = A' [T,ne] · V [ne,HD].
        let c = ctx.get().add(b * t * s.hh + h * hd);
        matmul(
            s.isa,
            t,
            hd,
            ne,
            a,
            View::rows(v.as_ptr(), hd),
            ViewMut::rows(c, s.hh),
        );
    });
}

#[allow(clippy::too_many_arguments)]
fn backward_with(
    isa: Isa,
    shape: AttentionShape,
    qkv: &[f32],
    prefix_kv: &[f32],
    key_mask: &[f32],
    dropout: Option<&Dropout>,
    probs: &[f32],
    dctx: &[f32],
    dqkv: Option<&mut [f32]>,
    dprefix_kv: &mut [f32],
) {
    let s = Setup::new(isa, shape, qkv, prefix_kv, key_mask, dropout);
    let tasks = shape.batch * s.nh;
    assert_eq!(
        probs.len(),
        tasks * s.t * s.n,
        "probs must be [B, NH, T, P+T]"
    );
    assert_eq!(
        dctx.len(),
        shape.batch * s.t * s.hh,
        "dctx must be [B*T, H]"
    );
    assert_eq!(
        dprefix_kv.len(),
        prefix_kv.len(),
        "dprefix_kv must be [B, P, 2H]"
    );
    if let Some(d) = dqkv.as_ref() {
        assert_eq!(d.len(), qkv.len(), "dqkv must be [B*T, 3H]");
    }
    if tasks == 0 || s.t == 0 || s.hd == 0 {
        dprefix_kv.fill(0.0);
        if let Some(d) = dqkv {
            d.fill(0.0);
        }
        return;
    }
    let dqkv = dqkv.map(|d| SharedMut(d.as_mut_ptr()));
    let dprefix = SharedMut(dprefix_kv.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|task| {
        // SAFETY: the lengths were checked above; task (b, h) writes only its own
        // blocks (see SharedMut).
        unsafe { backward_task(&s, task, probs, dctx, dqkv, dprefix) }
    });
}

/// Task (b, h) = (task / NH, task % NH) of the backward.
unsafe fn backward_task(
    s: &Setup,
    task: usize,
    probs: &[f32],
    dctx: &[f32],
    dqkv: Option<SharedMut>,
    dprefix: SharedMut,
) {
    let (b, h) = (task / s.nh, task % s.nh);
    s.prefetch_task(task + 1, Some(dctx), Some(probs));
    let (t, p, n, hd, hh) = (s.t, s.p, s.n, s.hd, s.hh);
    let ne = s.n_eff[b];
    let ldn = ne.next_multiple_of(16);
    let pblock = &probs[(b * s.nh + h) * t * n..(b * s.nh + h + 1) * t * n];
    let tokens = dqkv.is_some();
    // Scratch: Vᵀ [HD, ldn] | dS [T, ldn] | K [ne, HD] (token grads only) |
    // with dropout: A' [T, ldn].
    let kg_len = if tokens { ne * hd } else { 0 };
    let drop_len = if s.dropout.is_some() { t * ldn } else { 0 };
    let len = hd * ldn + t * ldn + kg_len + drop_len;
    with_scratch(len, |scratch| {
        let (vt, rest) = scratch.split_at_mut(hd * ldn);
        let (ds, rest) = rest.split_at_mut(t * ldn);
        let (kg, rest) = rest.split_at_mut(kg_len);
        s.gather_transposed(1, b, h, ne, ldn, vt);
        if tokens {
            s.gather_rows(0, b, h, ne, kg);
        }

        // dA' [T, ne] = dctx [T,HD] · Vᵀ [HD,ne]. dctx of head h: [T, HD], rows H apart.
        let dctx_v = View::rows(dctx[b * t * hh + h * hd..].as_ptr(), hh);
        matmul(
            s.isa,
            t,
            ne,
            hd,
            dctx_v,
            View::rows(vt.as_ptr(), ldn),
            ViewMut::rows(ds.as_mut_ptr(), ldn),
        );

        // dS = probs ⊙ (dA − rowsum(dA ⊙ probs)) / √HD, in place; A' for dV.
        // A'ᵀ [ne, T] is read through a transposed view (rs = 1).
        let a_t = match s.dropout {
            None => {
                softmax_backward_rows(
                    s.isa,
                    ds.as_mut_ptr(),
                    ldn,
                    pblock.as_ptr(),
                    n,
                    t,
                    ne,
                    s.scale,
                );
                View::cols(pblock.as_ptr(), n)
            }
            Some(d) => {
                // ab [T, ldn]: each row's mask factors (0 or 1/(1-p)), hashed once
                // for both uses, then A' = probs ⊙ factors where dV needs it.
                let ab = &mut rest[..t * ldn];
                let acols = if tokens { ne } else { p };
                for i in 0..t {
                    let f = &mut ab[i * ldn..i * ldn + ne];
                    f.fill(1.0);
                    d.apply(f, s.dropout_offset(b, h, i));
                    for (x, &m) in ds[i * ldn..i * ldn + ne].iter_mut().zip(f.iter()) {
                        *x *= m;
                    }
                    for (m, &pv) in f[..acols].iter_mut().zip(&pblock[i * n..]) {
                        *m *= pv;
                    }
                }
                softmax_backward_rows(
                    s.isa,
                    ds.as_mut_ptr(),
                    ldn,
                    pblock.as_ptr(),
                    n,
                    t,
                    ne,
                    s.scale,
                );
                View::cols(ab.as_ptr(), ldn)
            }
        };
        let ds_t = View::cols(ds.as_ptr(), ldn); // dSᵀ [ne, T]
        let q = s.q_view(b, h); // [T, HD]

        // Prefix keys and values: dKp [P,HD] = dSᵀ[:P]·Q, dVp = A'ᵀ[:P]·dctx.
        if p > 0 {
            let dp = dprefix.get().add(b * p * 2 * hh + h * hd);
            matmul(s.isa, p, hd, t, ds_t, q, ViewMut::rows(dp, 2 * hh));
            matmul(
                s.isa,
                p,
                hd,
                t,
                a_t,
                dctx_v,
                ViewMut::rows(dp.add(hh), 2 * hh),
            );
        }
        if let Some(dq) = dqkv {
            let base = dq.get().add(b * t * 3 * hh + h * hd);
            // dQ [T,HD] = dS [T,ne] · K [ne,HD].
            let ds_v = View::rows(ds.as_ptr(), ldn);
            matmul(
                s.isa,
                t,
                hd,
                ne,
                ds_v,
                View::rows(kg.as_ptr(), hd),
                ViewMut::rows(base, 3 * hh),
            );
            // Token keys [0, ne-P): dK = dSᵀ[P:]·Q, dV = A'ᵀ[P:]·dctx; the rest
            // (padding after the last real token) had probability 0: gradient 0.
            let nt = ne - p;
            matmul(
                s.isa,
                nt,
                hd,
                t,
                ds_t.rows_from(p),
                q,
                ViewMut::rows(base.add(hh), 3 * hh),
            );
            matmul(
                s.isa,
                nt,
                hd,
                t,
                a_t.rows_from(p),
                dctx_v,
                ViewMut::rows(base.add(2 * hh), 3 * hh),
            );
            for r in nt..t {
                std::slice::from_raw_parts_mut(base.add(r * 3 * hh + hh), hd).fill(0.0);
                std::slice::from_raw_parts_mut(base.add(r * 3 * hh + 2 * hh), hd).fill(0.0);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 stream of uniform f32 in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn vec(&mut self, len: usize, amp: f32) -> Vec<f32> {
            (0..len).map(|_| amp * self.next()).collect()
        }
    }

    /// One problem: shapes, inputs, and the gradient of L = Σ ctx ⊙ R.
    struct Case {
        shape: AttentionShape,
        qkv: Vec<f32>,
        prefix_kv: Vec<f32>,
        key_mask: Vec<f32>,
        dctx: Vec<f32>,
    }

    impl Case {
        fn new(shape: AttentionShape, lens: &[usize], seed: u64) -> Case {
            let AttentionShape {
                batch: b,
                seq: t,
                prefix: p,
                heads: nh,
                head_dim: hd,
            } = shape;
            assert_eq!(lens.len(), b);
            let h = nh * hd;
            let mut rng = Rng(seed);
            let key_mask = lens
                .iter()
                .flat_map(|&l| (0..t).map(move |j| if j < l { 1.0 } else { 0.0 }))
                .collect();
            Case {
                shape,
                qkv: rng.vec(b * t * 3 * h, 1.5),
                prefix_kv: rng.vec(b * p * 2 * h, 1.5),
                key_mask,
                dctx: rng.vec(b * t * h, 1.0),
            }
        }
        fn n(&self) -> usize {
            self.shape.prefix + self.shape.seq
        }
        fn h(&self) -> usize {
            self.shape.heads * self.shape.head_dim
        }
        fn probs_len(&self) -> usize {
            self.shape.batch * self.shape.heads * self.shape.seq * self.n()
        }

        fn forward(&self, isa: Isa, dropout: Option<&Dropout>) -> (Vec<f32>, Vec<f32>) {
            let mut probs = vec![f32::NAN; self.probs_len()];
            let mut ctx = vec![f32::NAN; self.shape.batch * self.shape.seq * self.h()];
            forward_with(
                isa,
                self.shape,
                &self.qkv,
                &self.prefix_kv,
                &self.key_mask,
                dropout,
                Some(&mut probs),
                &mut ctx,
            );
            (probs, ctx)
        }

        fn backward(
            &self,
            isa: Isa,
            dropout: Option<&Dropout>,
            probs: &[f32],
            tokens: bool,
        ) -> (Option<Vec<f32>>, Vec<f32>) {
            let mut dqkv = tokens.then(|| vec![f32::NAN; self.qkv.len()]);
            let mut dprefix = vec![f32::NAN; self.prefix_kv.len()];
            backward_with(
                isa,
                self.shape,
                &self.qkv,
                &self.prefix_kv,
                &self.key_mask,
                dropout,
                probs,
                &self.dctx,
                dqkv.as_deref_mut(),
                &mut dprefix,
            );
            (dqkv, dprefix)
        }

        /// L = Σ ctx ⊙ dctx through the kernel (f64 sum of the f32 ctx).
        fn loss(&self, isa: Isa, dropout: Option<&Dropout>) -> f64 {
            let (_, ctx) = self.forward(isa, dropout);
            ctx.iter()
                .zip(&self.dctx)
                .map(|(&c, &r)| c as f64 * r as f64)
                .sum()
        }
    }

    /// Naive f64 reference: (probs before dropout, ctx, dqkv, dprefix_kv).
    struct Reference {
        probs: Vec<f64>,
        ctx: Vec<f64>,
        dqkv: Vec<f64>,
        dprefix: Vec<f64>,
    }

    fn reference(c: &Case, dropout: Option<&Dropout>) -> Reference {
        let AttentionShape {
            batch: bs,
            seq: t,
            prefix: p,
            heads: nh,
            head_dim: hd,
        } = c.shape;
        let (n, h) = (c.n(), c.h());
        // Index of element d of key (which = 0) or value (1) j of head hh, batch b.
        let kv = |which: usize, b: usize, hh: usize, j: usize, d: usize| -> (bool, usize) {
            if j < p {
                (true, (b * p + j) * 2 * h + which * h + hh * hd + d)
            } else {
                (
                    false,
                    (b * t + j - p) * 3 * h + (1 + which) * h + hh * hd + d,
                )
            }
        };
        let get = |(pre, i): (bool, usize)| {
            if pre {
                c.prefix_kv[i] as f64
            } else {
                c.qkv[i] as f64
            }
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let mut r = Reference {
            probs: vec![0.0; c.probs_len()],
            ctx: vec![0.0; bs * t * h],
            dqkv: vec![0.0; c.qkv.len()],
            dprefix: vec![0.0; c.prefix_kv.len()],
        };
        for b in 0..bs {
            for hh in 0..nh {
                for i in 0..t {
                    let q = |d: usize| c.qkv[(b * t + i) * 3 * h + hh * hd + d] as f64;
                    let row0 = ((b * nh + hh) * t + i) * n;
                    // HF: scores + (1 - mask)·finfo(f32).min, then softmax.
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 = (0..hd).map(|d| q(d) * get(kv(0, b, hh, j, d))).sum();
                            let m = if j < p {
                                1.0
                            } else {
                                c.key_mask[b * t + j - p] as f64
                            };
                            dot * scale + (1.0 - m) * f32::MIN as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let pr: Vec<f64> = e.iter().map(|&x| x / sum).collect();
                    let fac: Vec<f64> = (0..n)
                        .map(|j| match dropout {
                            Some(dr) if dr.p > 0.0 => {
                                if dr.keep((row0 + j) as u64) {
                                    1.0 / (1.0 - dr.p as f64)
                                } else {
                                    0.0
                                }
                            }
                            _ => 1.0,
                        })
                        .collect();
                    let a: Vec<f64> = (0..n).map(|j| pr[j] * fac[j]).collect();
                    r.probs[row0..row0 + n].copy_from_slice(&pr);
                    let dctx = |d: usize| c.dctx[(b * t + i) * h + hh * hd + d] as f64;
                    for d in 0..hd {
                        r.ctx[(b * t + i) * h + hh * hd + d] =
                            (0..n).map(|j| a[j] * get(kv(1, b, hh, j, d))).sum();
                    }
                    // Backward of this row.
                    let da: Vec<f64> = (0..n)
                        .map(|j| {
                            fac[j]
                                * (0..hd)
                                    .map(|d| dctx(d) * get(kv(1, b, hh, j, d)))
                                    .sum::<f64>()
                        })
                        .collect();
                    let dot: f64 = (0..n).map(|j| da[j] * pr[j]).sum();
                    let ds: Vec<f64> = (0..n).map(|j| pr[j] * (da[j] - dot) * scale).collect();
                    for j in 0..n {
                        for d in 0..hd {
                            r.dqkv[(b * t + i) * 3 * h + hh * hd + d] +=
                                ds[j] * get(kv(0, b, hh, j, d));
                            for (which, g) in [(0, ds[j] * q(d)), (1, a[j] * dctx(d))] {
                                match kv(which, b, hh, j, d) {
                                    (true, at) => r.dprefix[at] += g,
                                    (false, at) => r.dqkv[at] += g,
                                }
                            }
                        }
                    }
                }
            }
        }
        r
    }

    #[track_caller]
    fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= atol + rtol * w.abs(),
                "{what}[{i}]: got {g}, want {w} (err {err:e})"
            );
        }
    }

    fn shape(
        batch: usize,
        seq: usize,
        prefix: usize,
        heads: usize,
        head_dim: usize,
    ) -> AttentionShape {
        AttentionShape {
            batch,
            seq,
            prefix,
            heads,
            head_dim,
        }
    }

    /// (shape, sequence lengths) covering ragged tails, P = 0, HD 5/32/64 and
    /// several micro-kernel panel widths (N = 7, 11, 48, 66, 160).
    fn cases() -> Vec<Case> {
        vec![
            Case::new(shape(3, 7, 0, 2, 5), &[7, 5, 2], 1),
            Case::new(shape(3, 7, 4, 2, 5), &[7, 5, 2], 2),
            Case::new(shape(2, 37, 11, 3, 32), &[37, 20], 3),
            Case::new(shape(2, 9, 3, 2, 32), &[9, 1], 4),
            Case::new(shape(1, 50, 16, 2, 64), &[50], 5),
            Case::new(shape(2, 144, 16, 1, 32), &[144, 100], 6),
        ]
    }

    #[test]
    fn forward_matches_reference() {
        for c in cases() {
            let r = reference(&c, None);
            for isa in Isa::supported() {
                let what = format!("{:?} {isa:?}", c.shape);
                let (probs, ctx) = c.forward(isa, None);
                assert_close(&format!("probs {what}"), &probs, &r.probs, 1e-6, 1e-5);
                assert_close(&format!("ctx {what}"), &ctx, &r.ctx, 1e-5, 1e-4);
                // Inference (no saved probs) computes the same thing in scratch.
                let mut ctx2 = vec![f32::NAN; ctx.len()];
                forward_with(
                    isa,
                    c.shape,
                    &c.qkv,
                    &c.prefix_kv,
                    &c.key_mask,
                    None,
                    None,
                    &mut ctx2,
                );
                assert_eq!(ctx, ctx2, "inference ctx {what}");
            }
        }
    }

    #[test]
    fn backward_matches_reference() {
        for c in cases() {
            let r = reference(&c, None);
            for isa in Isa::supported() {
                let what = format!("{:?} {isa:?}", c.shape);
                let (probs, _) = c.forward(isa, None);
                let (dqkv, dprefix) = c.backward(isa, None, &probs, true);
                assert_close(&format!("dqkv {what}"), &dqkv.unwrap(), &r.dqkv, 1e-5, 1e-4);
                assert_close(&format!("dprefix {what}"), &dprefix, &r.dprefix, 1e-5, 1e-4);
                // The lowest layer skips the token gradients, not the prefix ones.
                let (none, dprefix2) = c.backward(isa, None, &probs, false);
                assert!(none.is_none());
                assert_eq!(dprefix, dprefix2, "dprefix without dqkv {what}");
            }
        }
    }

    #[test]
    fn masked_keys_get_zero_probability_and_rows_sum_to_one() {
        // Interior padding too (not only a padded tail), and a P = 0 row with
        // no real token at all, which HF makes uniform.
        let mut c = Case::new(shape(3, 6, 0, 2, 8), &[6, 6, 6], 7);
        c.key_mask = vec![
            1., 0., 1., 1., 0., 0., /**/ 0., 0., 0., 0., 0., 0., /**/ 1., 1., 1., 1., 1.,
            1.,
        ];
        let mut cp = Case::new(shape(3, 6, 3, 2, 8), &[6, 6, 6], 8);
        cp.key_mask = c.key_mask.clone();
        for c in [&c, &cp] {
            let (t, p, n, nh) = (c.shape.seq, c.shape.prefix, c.n(), c.shape.heads);
            let r = reference(c, None);
            for isa in Isa::supported() {
                let (probs, ctx) = c.forward(isa, None);
                assert_close("probs", &probs, &r.probs, 1e-6, 1e-5);
                assert_close("ctx", &ctx, &r.ctx, 1e-5, 1e-4);
                for (row, pr) in probs.chunks(n).enumerate() {
                    let b = row / (nh * t);
                    let all_masked =
                        p == 0 && c.key_mask[b * t..(b + 1) * t].iter().all(|&m| m == 0.0);
                    for (j, &x) in pr.iter().enumerate() {
                        if all_masked {
                            assert_eq!(x, 1.0 / n as f32, "uniform row {row}");
                        } else if j >= p && c.key_mask[b * t + j - p] == 0.0 {
                            assert_eq!(x, 0.0, "{isa:?} row {row} key {j}");
                        } else {
                            assert!(x > 0.0);
                        }
                    }
                    let sum: f32 = pr.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "row {row} sums to {sum}");
                }
                let (dqkv, dprefix) = c.backward(isa, None, &probs, true);
                assert_close("dqkv", &dqkv.unwrap(), &r.dqkv, 1e-5, 1e-4);
                assert_close("dprefix", &dprefix, &r.dprefix, 1e-5, 1e-4);
            }
        }
    }

    /// Central differences of L = Σ ctx ⊙ R on the reference (f64, tight), and
    /// on the f32 kernel itself (loose), at a spread of coordinates.
    fn check_finite_differences(c: &Case, dropout: Option<&Dropout>) {
        let r = reference(c, dropout);
        let ref_loss = |c: &Case| -> f64 {
            reference(c, dropout)
                .ctx
                .iter()
                .zip(&c.dctx)
                .map(|(&x, &y)| x * y as f64)
                .sum()
        };
        let isa = detect_isa();
        let (probs, _) = c.forward(isa, dropout);
        let (dqkv, dprefix) = c.backward(isa, dropout, &probs, true);
        let dqkv = dqkv.unwrap();
        for prefix in [false, true] {
            let len = if prefix {
                c.prefix_kv.len()
            } else {
                c.qkv.len()
            };
            for idx in (0..len).step_by(len / 23 + 1) {
                let perturbed = |delta: f32| {
                    let mut c2 = Case {
                        shape: c.shape,
                        qkv: c.qkv.clone(),
                        prefix_kv: c.prefix_kv.clone(),
                        key_mask: c.key_mask.clone(),
                        dctx: c.dctx.clone(),
                    };
                    if prefix {
                        c2.prefix_kv[idx] += delta;
                    } else {
                        c2.qkv[idx] += delta;
                    }
                    c2
                };
                let (want, got) = if prefix {
                    (r.dprefix[idx], dprefix[idx])
                } else {
                    (r.dqkv[idx], dqkv[idx])
                };
                // f64 reference: its analytic gradient against its own differences.
                // (The f32 inputs move by exactly ±2⁻¹², representable.)
                let eps = 1.0 / 4096.0;
                let fd =
                    (ref_loss(&perturbed(eps)) - ref_loss(&perturbed(-eps))) / (2.0 * eps as f64);
                assert!(
                    (fd - want).abs() <= 1e-6 + 1e-4 * want.abs(),
                    "ref fd prefix={prefix} [{idx}]: {fd} vs {want}"
                );
                // The kernel: f32 forward differences are noisy, hence eps = 1/64.
                let eps = 1.0 / 64.0;
                let fd = (perturbed(eps).loss(isa, dropout) - perturbed(-eps).loss(isa, dropout))
                    / (2.0 * eps as f64);
                assert!(
                    (fd - got as f64).abs() <= 2e-3 + 2e-2 * fd.abs(),
                    "kernel fd prefix={prefix} [{idx}]: {fd} vs {got}"
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        check_finite_differences(&Case::new(shape(2, 5, 3, 2, 4), &[5, 3], 11), None);
        check_finite_differences(&Case::new(shape(2, 7, 4, 2, 32), &[7, 2], 12), None);
    }

    #[test]
    fn dropout_forward_and_backward() {
        let drop = Dropout {
            p: 0.3,
            seed: 42,
            stream: 5,
        };
        for c in [
            Case::new(shape(3, 7, 4, 2, 5), &[7, 5, 2], 21),
            Case::new(shape(2, 37, 11, 3, 32), &[37, 20], 22),
        ] {
            let r = reference(&c, Some(&drop));
            for isa in Isa::supported() {
                let what = format!("{:?} {isa:?}", c.shape);
                let (probs, ctx) = c.forward(isa, Some(&drop));
                // probs are saved before dropout: identical to a run without it.
                let (probs0, ctx0) = c.forward(isa, None);
                assert_eq!(probs, probs0, "{what}");
                assert_ne!(ctx, ctx0, "dropout changed nothing {what}");
                // The reference drops element (b,h,i,j) iff !keep(flat index).
                assert_close(&format!("ctx {what}"), &ctx, &r.ctx, 1e-5, 1e-4);
                let (dqkv, dprefix) = c.backward(isa, Some(&drop), &probs, true);
                assert_close(&format!("dqkv {what}"), &dqkv.unwrap(), &r.dqkv, 1e-5, 1e-4);
                assert_close(&format!("dprefix {what}"), &dprefix, &r.dprefix, 1e-5, 1e-4);
                let (_, dprefix2) = c.backward(isa, Some(&drop), &probs, false);
                assert_eq!(dprefix, dprefix2, "dprefix without dqkv {what}");
            }
        }
        // The mask is a fixed function of the seed: differences see it too.
        check_finite_differences(&Case::new(shape(2, 5, 3, 2, 4), &[5, 3], 23), Some(&drop));
    }
}
