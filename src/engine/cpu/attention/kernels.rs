//! The kernels of one (batch row, head) attention task: the strided product
//! C = A·B, the row softmax and its backward, and the gathering of K
//! transposed, as plain loops, as the same loops compiled for AVX2 and FMA
//! (fused multiply-adds, a vectorised exp), and as AVX-512F micro-kernels.
//! [`Isa`] says which set runs; the driver in `mod.rs` picks it once per
//! call.

/// Which kernels run. `Avx2` and `Avx512` are only ever constructed after
/// the CPU was checked for their features (AVX2 and FMA; AVX-512F), which
/// is what makes calling their kernels sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The fastest set this CPU runs.
pub(super) fn detect_isa() -> Isa {
    *Isa::supported()
        .last()
        .expect("the plain loops run anywhere")
}

impl Isa {
    /// Every kernel set this CPU runs, slowest first (the tests check each):
    /// the plain loops, the AVX2 set where it has AVX2 and FMA (AMD's Zen
    /// 1-3, many of Intel's parts), AVX-512 where it has AVX-512F.
    pub(super) fn supported() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// A read-only strided matrix: element (r, c) at ptr + r·rs + c·cs.
#[derive(Clone, Copy)]
pub(super) struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl View {
    /// Row-major rows `rs` apart.
    pub(super) fn rows(ptr: *const f32, rs: usize) -> View {
        View { ptr, rs, cs: 1 }
    }

    /// The transpose of row-major rows `cs` apart: element (r, c) at ptr[c·cs + r].
    pub(super) fn cols(ptr: *const f32, cs: usize) -> View {
        View { ptr, rs: 1, cs }
    }

    /// The view starting at row r.
    pub(super) fn rows_from(self, r: usize) -> View {
        View {
            ptr: self.ptr.wrapping_add(r * self.rs),
            ..self
        }
    }
}

/// An output matrix: rows rs apart, columns contiguous.
#[derive(Clone, Copy)]
pub(super) struct ViewMut {
    ptr: *mut f32,
    rs: usize,
}

impl ViewMut {
    pub(super) fn rows(ptr: *mut f32, rs: usize) -> ViewMut {
        ViewMut { ptr, rs }
    }
}

/// C[M,N] = A[M,K] · B[K,N] (overwrites C). B must have contiguous rows
/// (b.cs == 1).
///
/// Safety: every element of A, B, C in range is valid to read (write for C),
/// and C overlaps neither A nor B.
pub(super) unsafe fn matmul(isa: Isa, m: usize, n: usize, k: usize, a: View, b: View, c: ViewMut) {
    debug_assert_eq!(b.cs, 1);
    if m == 0 || n == 0 {
        return;
    }
    match isa {
        Isa::Scalar => scalar::matmul(m, n, k, a, b, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::matmul(m, n, k, a, b, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::matmul(m, n, k, a, b, c),
    }
}

/// Each of `rows` rows (stride rs) of n scores: x ← softmax(x·scale + bias).
///
/// Safety: the rows are valid for reads and writes; bias.len() ≥ n.
pub(super) unsafe fn softmax_rows(
    isa: Isa,
    x: *mut f32,
    rs: usize,
    rows: usize,
    n: usize,
    bias: &[f32],
    scale: f32,
) {
    assert!(bias.len() >= n);
    let b = bias.as_ptr();
    for (i, four) in row_blocks(isa, rows) {
        let x = x.add(i * rs);
        match (isa, four) {
            (Isa::Scalar, _) => {
                scalar::softmax_row(std::slice::from_raw_parts_mut(x, n), bias, scale)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, true) => avx2::softmax_block::<4>(x, rs, n, b, scale),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, false) => avx2::softmax_block::<1>(x, rs, n, b, scale),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, true) => avx512::softmax_block::<4>(x, rs, n, b, scale),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, false) => avx512::softmax_block::<1>(x, rs, n, b, scale),
        }
    }
}

/// The row blocks of the softmax kernels, (first row, whether 4 rows):
/// the vector sets take 4 rows at a time so that the rows' reductions and
/// exps overlap instead of serialising on latency, then single rows; the
/// plain loops take single rows.
fn row_blocks(isa: Isa, rows: usize) -> impl Iterator<Item = (usize, bool)> {
    let fours = if isa == Isa::Scalar { 0 } else { rows / 4 };
    (0..fours)
        .map(|b| (4 * b, true))
        .chain((4 * fours..rows).map(|i| (i, false)))
}

/// Softmax's backward with the score scale folded in, per row of n:
/// d ← p ⊙ (d − Σ d⊙p) · scale. d rows drs apart, p rows prs apart.
///
/// Safety: the rows are valid (d for writes too) and do not overlap.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn softmax_backward_rows(
    isa: Isa,
    d: *mut f32,
    drs: usize,
    p: *const f32,
    prs: usize,
    rows: usize,
    n: usize,
    scale: f32,
) {
    for (i, four) in row_blocks(isa, rows) {
        let (d, p) = (d.add(i * drs), p.add(i * prs));
        match (isa, four) {
            // A dot product and a scaled difference a row: the plain loop.
            (Isa::Scalar, _) => scalar::softmax_backward_row(
                std::slice::from_raw_parts_mut(d, n),
                std::slice::from_raw_parts(p, n),
                scale,
            ),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, true) => avx2::softmax_backward_block::<4>(d, drs, p, prs, n, scale),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, false) => avx2::softmax_backward_block::<1>(d, drs, p, prs, n, scale),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, true) => avx512::softmax_backward_block::<4>(d, drs, p, prs, n, scale),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, false) => avx512::softmax_backward_block::<1>(d, drs, p, prs, n, scale),
        }
    }
}

/// dst[d·ldn + j] = row(j)[d] for j < ne, d < hd; columns [ne, ldn) of dst
/// may be overwritten (with zeros).
///
/// Safety: row(j) is valid for hd reads; dst for hd·ldn writes; ldn is a
/// multiple of 16 and ≥ ne.
pub(super) unsafe fn transpose(
    isa: Isa,
    ne: usize,
    hd: usize,
    row: impl Fn(usize) -> *const f32,
    dst: *mut f32,
    ldn: usize,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::transpose(ne, hd, row, dst, ldn),
        // A copy: nothing for AVX2 to fuse.
        _ => {
            for j in 0..ne {
                let r = row(j);
                for d in 0..hd {
                    *dst.add(d * ldn + j) = *r.add(d);
                }
            }
        }
    }
}

/// The plain loops (the C row loop vectorises with the target's SIMD; the
/// softmax is scalar, std's exp and in-order sums).
mod scalar {
    use super::{View, ViewMut};

    pub unsafe fn matmul(m: usize, n: usize, k: usize, a: View, b: View, c: ViewMut) {
        for i in 0..m {
            let crow = std::slice::from_raw_parts_mut(c.ptr.add(i * c.rs), n);
            crow.fill(0.0);
            for p in 0..k {
                let av = *a.ptr.add(i * a.rs + p * a.cs);
                let brow = std::slice::from_raw_parts(b.ptr.add(p * b.rs), n);
                for (cv, &bv) in crow.iter_mut().zip(brow) {
                    *cv += av * bv;
                }
            }
        }
    }

    pub fn softmax_row(x: &mut [f32], bias: &[f32], scale: f32) {
        let mut max = f32::NEG_INFINITY;
        for (v, &bv) in x.iter_mut().zip(bias) {
            *v = bv + *v * scale;
            max = max.max(*v);
        }
        let mut sum = 0.0f32;
        for v in x.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }

    pub fn softmax_backward_row(d: &mut [f32], p: &[f32], scale: f32) {
        let dot: f32 = d.iter().zip(p).map(|(&x, &y)| x * y).sum();
        for (x, &y) in d.iter_mut().zip(p) {
            *x = y * (*x - dot) * scale;
        }
    }
}

/// For CPUs with AVX2 and FMA but not AVX-512: the products by `gemm`'s
/// AVX2 micro-kernels, one thread (the tasks are the parallel loop), on the
/// same strided views; the softmax and its backward in 8-lane vectors, 4
/// rows at a time, as the AVX-512 set does in 16. The plain product loop (a
/// multiply and an add per element, 4 wide) ran at 16-19 GFLOP/s per MiniLM
/// layer on a Zen 3 core pair; the plain softmax loop, whose in-order sum
/// does not vectorise, took 10.5 % of a MiniLM inference there. Every
/// function requires a CPU with both features.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{View, ViewMut};
    use std::arch::x86_64::*;

    pub unsafe fn matmul(m: usize, n: usize, k: usize, a: View, b: View, c: ViewMut) {
        if k == 0 {
            for i in 0..m {
                std::slice::from_raw_parts_mut(c.ptr.add(i * c.rs), n).fill(0.0);
            }
            return;
        }
        // c := 1·(a·b), c not read.
        gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            1,
            c.rs as isize,
            false,
            a.ptr,
            a.cs as isize,
            a.rs as isize,
            b.ptr,
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }

    /// The 8-lane vectors of a row of n: `full` whole ones, then lanes
    /// [0, n % 8) of one more when `tail` (a maskload/maskstore mask: lane i
    /// all ones when i < n % 8).
    struct Row {
        full: usize,
        tail: Option<__m256i>,
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn row(n: usize) -> Row {
        let rest = (n % 8) as i32;
        Row {
            full: n / 8,
            tail: (rest > 0).then(|| {
                _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(rest),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                )
            }),
        }
    }

    /// Lanes of `v` where `mask` is clear replaced by `fill`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn keep(mask: __m256i, v: __m256, fill: f32) -> __m256 {
        _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(mask))
    }

    /// The sum of v's 8 lanes, or with MAX their max.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn reduce<const MAX: bool>(v: __m256) -> f32 {
        let op = |a, b| {
            if MAX {
                _mm_max_ps(a, b)
            } else {
                _mm_add_ps(a, b)
            }
        };
        let s = op(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = op(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(op(s, _mm_movehdup_ps(s)))
    }

    /// e^d for d = score − row max ≤ 0, lane by lane as the crate's scalar
    /// `gelu::exp` (its constants, reduction, polynomial and order, so the
    /// same bits), and exactly 0 below −87 (masked keys get probability exactly
    /// 0); a NaN stays NaN.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub fn exp(d: __m256) -> __m256 {
        use crate::engine::cpu::gelu::{EXP_LN2_HI, EXP_LN2_LO, EXP_ROUND, EXP_TAYLOR};
        let kf = _mm256_fmadd_ps(
            d,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(EXP_ROUND),
        );
        let n = _mm256_sub_epi32(
            _mm256_castps_si256(kf),
            _mm256_set1_epi32(EXP_ROUND.to_bits() as i32),
        );
        let k = _mm256_sub_ps(kf, _mm256_set1_ps(EXP_ROUND));
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(EXP_LN2_HI), d);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(EXP_LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_TAYLOR[0]);
        for c in &EXP_TAYLOR[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127)));
        let e = _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
        // d < −87 → 0 (false for NaN, which stays).
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(d, _mm256_set1_ps(-87.0));
        _mm256_andnot_ps(under, e)
    }

    /// Row softmax, R rows at a time so that their reductions and exps
    /// overlap: max of y = x·scale + bias (recomputed, not stored), e =
    /// exp(y − max) stored and summed, then e · (1/sum). A tail's missing
    /// lanes are −∞ for the max and 0 for the sum, and never stored.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn softmax_block<const R: usize>(
        x: *mut f32,
        rs: usize,
        n: usize,
        bias: *const f32,
        scale: f32,
    ) {
        let Row { full, tail } = row(n);
        let vscale = _mm256_set1_ps(scale);
        let y = |r: usize, v: usize, bv: __m256| {
            _mm256_fmadd_ps(_mm256_loadu_ps(x.add(r * rs + 8 * v)), vscale, bv)
        };
        let y_tail = |r: usize, m: __m256i, bv: __m256| {
            _mm256_fmadd_ps(_mm256_maskload_ps(x.add(r * rs + 8 * full), m), vscale, bv)
        };
        let mut vmax = [_mm256_set1_ps(f32::NEG_INFINITY); R];
        for v in 0..full {
            let bv = _mm256_loadu_ps(bias.add(8 * v));
            for r in 0..R {
                vmax[r] = _mm256_max_ps(vmax[r], y(r, v, bv));
            }
        }
        if let Some(m) = tail {
            let bv = _mm256_maskload_ps(bias.add(8 * full), m);
            for r in 0..R {
                vmax[r] = _mm256_max_ps(vmax[r], keep(m, y_tail(r, m, bv), f32::NEG_INFINITY));
            }
        }
        for r in 0..R {
            vmax[r] = _mm256_set1_ps(reduce::<true>(vmax[r]));
        }
        let mut vsum = [_mm256_setzero_ps(); R];
        for v in 0..full {
            let bv = _mm256_loadu_ps(bias.add(8 * v));
            for r in 0..R {
                let e = exp(_mm256_sub_ps(y(r, v, bv), vmax[r]));
                _mm256_storeu_ps(x.add(r * rs + 8 * v), e);
                vsum[r] = _mm256_add_ps(vsum[r], e);
            }
        }
        if let Some(m) = tail {
            let bv = _mm256_maskload_ps(bias.add(8 * full), m);
            for r in 0..R {
                let e = keep(m, exp(_mm256_sub_ps(y_tail(r, m, bv), vmax[r])), 0.0);
                _mm256_maskstore_ps(x.add(r * rs + 8 * full), m, e);
                vsum[r] = _mm256_add_ps(vsum[r], e);
            }
        }
        for r in 0..R {
            let inv = _mm256_set1_ps(1.0 / reduce::<false>(vsum[r]));
            for v in 0..full {
                let p = x.add(r * rs + 8 * v);
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), inv));
            }
            if let Some(m) = tail {
                let p = x.add(r * rs + 8 * full);
                _mm256_maskstore_ps(p, m, _mm256_mul_ps(_mm256_maskload_ps(p, m), inv));
            }
        }
    }

    /// d ← p ⊙ (d − Σ d⊙p) · scale, R rows at a time (as softmax_block);
    /// a tail's missing lanes load as 0 and are not stored.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn softmax_backward_block<const R: usize>(
        d: *mut f32,
        drs: usize,
        p: *const f32,
        prs: usize,
        n: usize,
        scale: f32,
    ) {
        let Row { full, tail } = row(n);
        let mut dot = [_mm256_setzero_ps(); R];
        for v in 0..full {
            for r in 0..R {
                let dv = _mm256_loadu_ps(d.add(r * drs + 8 * v));
                dot[r] = _mm256_fmadd_ps(dv, _mm256_loadu_ps(p.add(r * prs + 8 * v)), dot[r]);
            }
        }
        if let Some(m) = tail {
            for r in 0..R {
                let dv = _mm256_maskload_ps(d.add(r * drs + 8 * full), m);
                let pv = _mm256_maskload_ps(p.add(r * prs + 8 * full), m);
                dot[r] = _mm256_fmadd_ps(dv, pv, dot[r]);
            }
        }
        for r in 0..R {
            dot[r] = _mm256_set1_ps(reduce::<false>(dot[r]));
        }
        let vscale = _mm256_set1_ps(scale);
        for r in 0..R {
            let y = |dv: __m256, pv: __m256| {
                _mm256_mul_ps(_mm256_sub_ps(dv, dot[r]), _mm256_mul_ps(pv, vscale))
            };
            for v in 0..full {
                let dp = d.add(r * drs + 8 * v);
                let pv = _mm256_loadu_ps(p.add(r * prs + 8 * v));
                _mm256_storeu_ps(dp, y(_mm256_loadu_ps(dp), pv));
            }
            if let Some(m) = tail {
                let dp = d.add(r * drs + 8 * full);
                let pv = _mm256_maskload_ps(p.add(r * prs + 8 * full), m);
                _mm256_maskstore_ps(dp, m, y(_mm256_maskload_ps(dp, m), pv));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{View, ViewMut};
    use std::arch::x86_64::*;

    /// Lanes [0, len) of a 16-lane vector (len ≥ 1).
    #[inline]
    fn tail_mask(len: usize) -> __mmask16 {
        if len >= 16 {
            0xFFFF
        } else {
            (1u16 << len) - 1
        }
    }

    /// One MR×(16·NV) tile of C = A·B, accumulators in registers (MR·NV ≤ 24
    /// of the 32 zmm). Per k: NV loads of B, MR broadcasts of A, MR·NV FMAs.
    /// The last vector of each row uses lanes `last` only (ragged N edge).
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const MR: usize, const NV: usize>(
        k: usize,
        a: View,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        last: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut ap = a.ptr;
        let mut bp = b;
        for _ in 0..k {
            let mut bv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                bv[v] = if v + 1 == NV {
                    _mm512_maskz_loadu_ps(last, bp.add(16 * v))
                } else {
                    _mm512_loadu_ps(bp.add(16 * v))
                };
            }
            for r in 0..MR {
                let av = _mm512_set1_ps(*ap.add(r * a.rs));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
            // wrapping: after the last k these point past A and B, unread.
            ap = ap.wrapping_add(a.cs);
            bp = bp.wrapping_add(ldb);
        }
        for r in 0..MR {
            for v in 0..NV {
                let m = if v + 1 == NV { last } else { 0xFFFF };
                _mm512_mask_storeu_ps(c.add(r * ldc + 16 * v), m, acc[r][v]);
            }
        }
    }

    /// All M rows of one 16·NV-wide column panel: MR-row tiles, then 4, then 1.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel<const MR: usize, const NV: usize>(
        m: usize,
        k: usize,
        a: View,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        last: __mmask16,
    ) {
        let mut i = 0;
        while i + MR <= m {
            tile::<MR, NV>(k, a.rows_from(i), b, ldb, c.add(i * ldc), ldc, last);
            i += MR;
        }
        if MR > 4 && i + 4 <= m {
            tile::<4, NV>(k, a.rows_from(i), b, ldb, c.add(i * ldc), ldc, last);
            i += 4;
        }
        while i < m {
            tile::<1, NV>(k, a.rows_from(i), b, ldb, c.add(i * ldc), ldc, last);
            i += 1;
        }
    }

    /// C = A·B, column panels of 3 vectors (48 floats: N = 144 is 3 panels),
    /// or 4 when exactly 4 remain (HD = 64 outputs).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn matmul(m: usize, n: usize, k: usize, a: View, b: View, c: ViewMut) {
        let nvec = n.div_ceil(16);
        let mut v0 = 0;
        while v0 < nvec {
            let left = nvec - v0;
            let nv = if left == 4 { 4 } else { left.min(3) };
            let last = if v0 + nv == nvec {
                tail_mask(n - 16 * (nvec - 1))
            } else {
                0xFFFF
            };
            let bp = b.ptr.add(16 * v0);
            let cp = c.ptr.add(16 * v0);
            match nv {
                1 => panel::<8, 1>(m, k, a, bp, b.rs, cp, c.rs, last),
                2 => panel::<8, 2>(m, k, a, bp, b.rs, cp, c.rs, last),
                3 => panel::<8, 3>(m, k, a, bp, b.rs, cp, c.rs, last),
                _ => panel::<6, 4>(m, k, a, bp, b.rs, cp, c.rs, last),
            }
            v0 += nv;
        }
    }

    /// e^x, x ≤ 88: Cody-Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, Cephes'
    /// degree-7 polynomial for e^r (≈1 ulp), 2^n applied by scalef. Inputs
    /// below -110 are clamped there, where the result underflows to exactly 0
    /// (so masked keys get probability 0, as with std's exp).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-110.0)),
            _mm512_set1_ps(88.0),
        );
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
        p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
        _mm512_scalef_ps(p, n)
    }

    /// Row softmax, R rows at a time so that their max and sum reductions and
    /// their exps overlap instead of serialising on latency. Three passes:
    /// max of y = x·scale + bias (not stored: recomputed next pass, it is one
    /// FMA), e = exp(y − max) stored and summed, then e · (1/sum).
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn softmax_block<const R: usize>(
        x: *mut f32,
        rs: usize,
        n: usize,
        bias: *const f32,
        scale: f32,
    ) {
        let nfull = n / 16;
        let tm = tail_mask(n % 16);
        let has_tail = !n.is_multiple_of(16);
        let vscale = _mm512_set1_ps(scale);
        let mut vmax = [_mm512_set1_ps(f32::NEG_INFINITY); R];
        for v in 0..nfull {
            let bv = _mm512_loadu_ps(bias.add(16 * v));
            for r in 0..R {
                let y = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(r * rs + 16 * v)), vscale, bv);
                vmax[r] = _mm512_max_ps(vmax[r], y);
            }
        }
        if has_tail {
            let bv = _mm512_maskz_loadu_ps(tm, bias.add(16 * nfull));
            for r in 0..R {
                let y = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(tm, x.add(r * rs + 16 * nfull)),
                    vscale,
                    bv,
                );
                vmax[r] = _mm512_mask_max_ps(vmax[r], tm, vmax[r], y);
            }
        }
        for r in 0..R {
            vmax[r] = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r]));
        }
        let mut vsum = [_mm512_setzero_ps(); R];
        for v in 0..nfull {
            let bv = _mm512_loadu_ps(bias.add(16 * v));
            for r in 0..R {
                let p = x.add(r * rs + 16 * v);
                let e = exp(_mm512_sub_ps(
                    _mm512_fmadd_ps(_mm512_loadu_ps(p), vscale, bv),
                    vmax[r],
                ));
                _mm512_storeu_ps(p, e);
                vsum[r] = _mm512_add_ps(vsum[r], e);
            }
        }
        if has_tail {
            let bv = _mm512_maskz_loadu_ps(tm, bias.add(16 * nfull));
            for r in 0..R {
                let p = x.add(r * rs + 16 * nfull);
                let e = exp(_mm512_sub_ps(
                    _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, p), vscale, bv),
                    vmax[r],
                ));
                _mm512_mask_storeu_ps(p, tm, e);
                vsum[r] = _mm512_mask_add_ps(vsum[r], tm, vsum[r], e);
            }
        }
        let mut inv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            inv[r] = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(vsum[r]));
        }
        for v in 0..nfull {
            for r in 0..R {
                let p = x.add(r * rs + 16 * v);
                _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), inv[r]));
            }
        }
        if has_tail {
            for r in 0..R {
                let p = x.add(r * rs + 16 * nfull);
                _mm512_mask_storeu_ps(p, tm, _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, p), inv[r]));
            }
        }
    }

    /// d ← p ⊙ (d − Σ d⊙p) · scale, R rows at a time (as softmax_block).
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn softmax_backward_block<const R: usize>(
        d: *mut f32,
        drs: usize,
        p: *const f32,
        prs: usize,
        n: usize,
        scale: f32,
    ) {
        let nvec = n.div_ceil(16);
        let mut dot = [_mm512_setzero_ps(); R];
        for v in 0..nvec {
            let m = tail_mask(n - 16 * v);
            for r in 0..R {
                let dv = _mm512_maskz_loadu_ps(m, d.add(r * drs + 16 * v));
                dot[r] = _mm512_fmadd_ps(
                    dv,
                    _mm512_maskz_loadu_ps(m, p.add(r * prs + 16 * v)),
                    dot[r],
                );
            }
        }
        for r in 0..R {
            dot[r] = _mm512_set1_ps(_mm512_reduce_add_ps(dot[r]));
        }
        let vscale = _mm512_set1_ps(scale);
        for v in 0..nvec {
            let m = tail_mask(n - 16 * v);
            for r in 0..R {
                let dp = d.add(r * drs + 16 * v);
                let pv = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(r * prs + 16 * v)), vscale);
                let y = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp), dot[r]), pv);
                _mm512_mask_storeu_ps(dp, m, y);
            }
        }
    }

    /// dst[d·ldn + j] = row(j)[d]: 16×16 blocks transposed in registers
    /// (unpack pairs, shuffle quads within 128-bit lanes, then two rounds of
    /// 128-bit lane shuffles). Missing rows (j ≥ ne) transpose as zeros.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose(
        ne: usize,
        hd: usize,
        row: impl Fn(usize) -> *const f32,
        dst: *mut f32,
        ldn: usize,
    ) {
        let mut j0 = 0;
        while j0 < ne {
            let kr = (ne - j0).min(16);
            let mut d0 = 0;
            while d0 < hd {
                let dm = tail_mask(hd - d0);
                let mut r = [_mm512_setzero_ps(); 16];
                for (k, rv) in r.iter_mut().enumerate().take(kr) {
                    *rv = _mm512_maskz_loadu_ps(dm, row(j0 + k).add(d0));
                }
                let w = transpose16(r);
                for (c, wv) in w.iter().enumerate().take((hd - d0).min(16)) {
                    _mm512_storeu_ps(dst.add((d0 + c) * ldn + j0), *wv);
                }
                d0 += 16;
            }
            j0 += 16;
        }
    }

    /// Transpose of a 16×16 block held as 16 row vectors.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // t[2k] = [r2k_0 r2k+1_0 r2k_1 r2k+1_1] per lane, t[2k+1] the same for cols 2, 3.
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // u[4q + c]: lane L holds rows 4q..4q+3 of column 4L + c.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let t = &t[4 * q..4 * q + 4];
            u[4 * q] = _mm512_shuffle_ps::<0x44>(t[0], t[2]);
            u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(t[0], t[2]);
            u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(t[1], t[3]);
            u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(t[1], t[3]);
        }
        let mut w = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            // Rows 0-7 and 8-15 of columns c, 8+c (0x88) and 4+c, 12+c (0xDD) ...
            let a = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let b = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
            let cc = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let dd = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
            // ... then all 16 rows of each column.
            w[c] = _mm512_shuffle_f32x4::<0x88>(a, cc);
            w[8 + c] = _mm512_shuffle_f32x4::<0xDD>(a, cc);
            w[4 + c] = _mm512_shuffle_f32x4::<0x88>(b, dd);
            w[12 + c] = _mm512_shuffle_f32x4::<0xDD>(b, dd);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_scalar() {
        for (ne, hd) in [
            (1usize, 1usize),
            (5, 7),
            (16, 16),
            (17, 32),
            (40, 5),
            (144, 64),
            (33, 20),
        ] {
            let ldn = ne.next_multiple_of(16);
            let src: Vec<f32> = (0..ne * hd).map(|i| (i as f32 * 0.37).sin()).collect();
            for isa in Isa::supported() {
                let mut dst = vec![f32::NAN; hd * ldn];
                // SAFETY: rows of src are hd long; dst is [hd, ldn].
                unsafe {
                    transpose(
                        isa,
                        ne,
                        hd,
                        |j| src[j * hd..].as_ptr(),
                        dst.as_mut_ptr(),
                        ldn,
                    )
                };
                for j in 0..ne {
                    for d in 0..hd {
                        assert_eq!(
                            dst[d * ldn + j],
                            src[j * hd + d],
                            "{isa:?} ne={ne} hd={hd} ({j}, {d})"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fast_exp_matches_std() {
        if detect_isa() != Isa::Avx512 {
            return;
        }
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..=200_000).map(|i| -120.0 + i as f32 * 6e-4).collect();
        xs.extend([
            0.0,
            -0.0,
            f32::MIN,
            f32::NEG_INFINITY,
            -1e-30,
            -87.33,
            -103.9,
        ]);
        for chunk in xs.chunks(16) {
            let mut buf = [0.0f32; 16];
            buf[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0.0f32; 16];
            // SAFETY: AVX-512F was detected above.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(buf.as_ptr())))
            };
            for (&x, &y) in chunk.iter().zip(&out) {
                let want = (x as f64).exp();
                if want >= f32::MIN_POSITIVE as f64 {
                    let rel = (y as f64 - want).abs() / want;
                    assert!(rel < 1e-6, "exp({x}) = {y}, want {want} (rel {rel:e})");
                } else if x <= -110.0 {
                    assert_eq!(y, 0.0, "exp({x}) must underflow to 0");
                } else {
                    // Subnormal results: absolute error below the smallest normal.
                    assert!(
                        (y as f64 - want).abs() < f32::MIN_POSITIVE as f64 * 1e-3,
                        "exp({x}) = {y}"
                    );
                }
            }
        }
    }

    /// The AVX2 softmax's exp is the scalar `gelu::exp` lane by lane, bit
    /// for bit, from −87 to 0; exactly 0 below −87 (−∞ and f32::MIN
    /// included); NaN in, NaN out.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_exp_is_the_scalar_exp() {
        if !Isa::supported().contains(&Isa::Avx2) {
            eprintln!("skipped: this CPU lacks AVX2 or FMA");
            return;
        }
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..=200_000).map(|i| -100.0 + i as f32 * 5e-4).collect();
        xs.extend([
            -0.0,
            -87.0,
            -87.000_01,
            f32::MIN,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        for chunk in xs.chunks(8) {
            let mut buf = [0.0f32; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0.0f32; 8];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(buf.as_ptr()))) };
            for (&x, &y) in chunk.iter().zip(&out) {
                if x.is_nan() {
                    assert!(y.is_nan(), "exp(NaN) = {y}");
                } else if x < -87.0 {
                    assert_eq!(y.to_bits(), 0, "exp({x}) = {y}, want exactly 0");
                } else {
                    let want = crate::engine::cpu::gelu::exp(x);
                    assert_eq!(y.to_bits(), want.to_bits(), "exp({x}) = {y}, want {want}");
                }
            }
        }
    }
}
