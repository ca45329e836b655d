//! GELU, erf form (HF "gelu"), fused with the bias of the dense layer before it.
//!
//! Forward and backward side by side (Φ, φ: standard normal cdf and pdf):
//!   forward    pre += b;  out = gelu(pre) = pre·Φ(pre) = ½·pre·(1 + erf(pre/√2))
//!   backward   g  *= gelu'(pre) = Φ(pre) + pre·φ(pre),  φ(x) = e^(−x²/2)/√(2π)
//!
//! `erf` and `exp` are our own branch-free f32 approximations (below) so the
//! loops vectorise; std's are scalar libm calls. The crate is built for baseline
//! x86-64, so each hot loop is compiled twice more, for AVX-512 and AVX2+FMA,
//! and picked at run time (`multiversion!` below).

use rayon::prelude::*;

/// Defines a function whose body is compiled for AVX-512 (f/bw/dq/vl, with
/// FMA), for AVX2+FMA, and for the baseline target, and dispatches on the CPU
/// at run time (`is_x86_feature_detected!` is a cached load). The body is an
/// `#[inline(always)]` inner fn, so the loops are vectorised inside each
/// feature-enabled copy. `f32::mul_add` in a body is one vfmadd in the fast
/// copies (and a correct, slow fmaf call in the baseline one).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("bmi2")
                    && std::arch::is_x86_feature_detected!("lzcnt")
                    && std::arch::is_x86_feature_detected!("popcnt")
                {
                    // SAFETY: the CPU has every feature v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("bmi2")
                    && std::arch::is_x86_feature_detected!("lzcnt")
                    && std::arch::is_x86_feature_detected!("popcnt")
                {
                    // SAFETY: the CPU has every feature v3 was compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// erf(x) for f32, max abs error 4.0e-7 against f64 erf (with FMA; the tests
/// check ≤ 1e-6 on a dense grid). Branch-free: erf(x) = x·P(x²)/Q(x²) on
/// |x| ≤ 4 (erf(4) = 1 − 1.5e-8 rounds to 1.0f, so clamping is exact in f32).
/// P (degree 6) and Q (degree 4, Q(0) = 1) are our own fit: a linearised
/// (Loeb) rational least-squares fit with Lawson reweighting towards minimax,
/// done in 50-digit arithmetic on 1200 Chebyshev nodes of [0, 4], minimising
/// the absolute error of erf; 9.2e-8 before rounding the coefficients to f32.
/// P(0) = 1.1283784 ≈ 2/√π, the slope of erf at 0. NaN propagates.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [
        1.128_378_4,
        2.181_733_4e-1,
        5.300_187_7e-2,
        4.478_921_6e-3,
        1.604_169_7e-4,
        -2.015_431e-6,
        1.921_914e-8,
    ];
    const Q: [f32; 5] = [
        1.0,
        5.266_77e-1,
        1.225_569_8e-1,
        1.591_987_2e-2,
        1.144_603_7e-3,
    ];
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    let mut p = P[6];
    p = p.mul_add(t, P[5]);
    p = p.mul_add(t, P[4]);
    p = p.mul_add(t, P[3]);
    p = p.mul_add(t, P[2]);
    p = p.mul_add(t, P[1]);
    p = p.mul_add(t, P[0]);
    let mut q = Q[4];
    q = q.mul_add(t, Q[3]);
    q = q.mul_add(t, Q[2]);
    q = q.mul_add(t, Q[1]);
    q = q.mul_add(t, Q[0]);
    x * p / q
}

/// [`exp`]'s constants, shared with the attention's AVX2 softmax, which
/// computes the same in 8 lanes: 1.5·2²³ (adding it rounds to an integer),
/// ln2 split in two so that n·LN2_HI is exact, and the Taylor coefficients
/// of e^r from the highest power down.
pub(crate) const EXP_ROUND: f32 = 12_582_912.0;
pub(crate) const EXP_LN2_HI: f32 = 0.693_145_75;
pub(crate) const EXP_LN2_LO: f32 = 1.428_606_8e-6;
pub(crate) const EXP_TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^a for f32, a ∈ [−87, 88] (callers clamp), relative error ~2 ulp.
/// Branch-free: a = n·ln2 + r with n = round(a/ln2) (the 1.5·2²³ trick, which
/// also leaves n in the low mantissa bits), |r| ≤ ln2/2; e^r by its degree-7
/// Taylor polynomial (truncation 5e-9 relative); 2ⁿ built in the exponent bits.
#[inline(always)]
pub fn exp(a: f32) -> f32 {
    let kf = a.mul_add(std::f32::consts::LOG2_E, EXP_ROUND);
    let n = kf.to_bits() as i32 - EXP_ROUND.to_bits() as i32;
    let k = kf - EXP_ROUND;
    let r = k.mul_add(-EXP_LN2_HI, a);
    let r = k.mul_add(-EXP_LN2_LO, r);
    // Written out, as before the constants were shared: the GELU kernels'
    // machine code is then unchanged (objdump); a loop over the array
    // timed slower in gelu's backward on a noisy machine.
    let t = EXP_TAYLOR;
    let mut p = t[0];
    p = p.mul_add(r, t[1]);
    p = p.mul_add(r, t[2]);
    p = p.mul_add(r, t[3]);
    p = p.mul_add(r, t[4]);
    p = p.mul_add(r, t[5]);
    p = p.mul_add(r, t[6]);
    p = p.mul_add(r, t[7]);
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    p * scale
}

/// gelu(x) = ½·x·(1 + erf(x/√2)), as torch's default (approximate = "none").
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// gelu'(x) = Φ(x) + x·φ(x). For |x| > 10, x·φ(x) < 1e-21 and Φ(x) is 0 or 1
/// in f32, so x is clamped for φ (keeps the exp argument in [−50, 0]).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let xc = x.clamp(-10.0, 10.0);
    let pdf = INV_SQRT_2PI * exp(-0.5 * xc * xc);
    cdf + xc * pdf
}

/// Elements per rayon task (GELU is compute-bound: ~40 flops per element).
const TASK_ELEMS: usize = 1 << 14;

multiversion! {
    /// One block of whole rows of width bias.len(): pre += b, out = gelu(pre).
    fn bias_gelu_block(pre: &mut [f32], bias: &[f32], out: &mut [f32]) {
        let n = bias.len();
        for (prow, orow) in pre.chunks_exact_mut(n).zip(out.chunks_exact_mut(n)) {
            for ((p, o), &b) in prow.iter_mut().zip(orow.iter_mut()).zip(bias) {
                let v = *p + b;
                *p = v;
                *o = gelu(v);
            }
        }
    }
}

multiversion! {
    /// g *= gelu'(pre) over a block.
    fn gelu_backward_block(pre: &[f32], g: &mut [f32]) {
        for (gv, &p) in g.iter_mut().zip(pre) {
            *gv *= gelu_grad(p);
        }
    }
}

/// pre[M,N] += bias (kept for the backward); out = gelu(pre).
pub fn bias_gelu_forward(pre: &mut [f32], bias: &[f32], out: &mut [f32]) {
    let n = bias.len();
    assert!(
        n > 0 && pre.len().is_multiple_of(n),
        "bias_gelu_forward: pre is not [M, {n}]"
    );
    assert_eq!(out.len(), pre.len(), "bias_gelu_forward: out shape");
    if pre.len() >= 2 * TASK_ELEMS && rayon::current_thread_index().is_none() {
        let step = (TASK_ELEMS / n).max(1) * n;
        pre.par_chunks_mut(step)
            .zip(out.par_chunks_mut(step))
            .for_each(|(p, o)| bias_gelu_block(p, bias, o));
    } else {
        bias_gelu_block(pre, bias, out);
    }
}

/// g[M,N] *= gelu'(pre), in place.
pub fn gelu_backward(pre: &[f32], g: &mut [f32]) {
    assert_eq!(pre.len(), g.len(), "gelu_backward: shapes differ");
    if pre.len() >= 2 * TASK_ELEMS && rayon::current_thread_index().is_none() {
        pre.par_chunks(TASK_ELEMS)
            .zip(g.par_chunks_mut(TASK_ELEMS))
            .for_each(|(p, gs)| gelu_backward_block(p, gs));
    } else {
        gelu_backward_block(pre, g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 erf from its everywhere-positive series
    /// erf(x) = 2/√π · e^(−x²) · Σ_n 2ⁿ x^(2n+1) / (1·3·…·(2n+1)):
    /// no cancellation, ~1e-15 relative for |x| ≤ 6; |erf| = 1 − 2e-17 beyond.
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term.abs() > 1e-18 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
    }

    fn gelu_grad_f64(x: f64) -> f64 {
        let cdf = 0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        cdf + x * pdf
    }

    #[test]
    fn erf_reference_is_sane() {
        // Tabulated values (Abramowitz & Stegun 7.1).
        assert!((erf_f64(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
        assert!((erf_f64(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
        assert!((erf_f64(2.0) - 0.995_322_265_018_952_7).abs() < 1e-15);
        assert!((erf_f64(-3.0) + 0.999_977_909_503_001_4).abs() < 1e-15);
    }

    #[test]
    fn erf_max_abs_error_below_1e6() {
        // Dense grid over [-6, 6] (saturated region included), scalar path.
        let mut worst = 0.0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let e = (erf(x) as f64 - erf_f64(x as f64)).abs();
            worst = worst.max(e);
        }
        eprintln!("erf: max abs error {worst:e} (scalar path)");
        assert!(worst <= 1e-6, "max |erf error| = {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-1e30), -1.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn exp_relative_error_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=1_750_000 {
            let a = -87.0 + i as f32 * 1e-4;
            let r = (a as f64).exp();
            worst = worst.max(((exp(a) as f64) - r).abs() / r);
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "max rel exp error = {worst:e}"
        );
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn bias_gelu_forward_matches_f64_odd_shape() {
        let (m, n) = (7, 13);
        let pre0: Vec<f32> = (0..m * n)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.4)
            .collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 0.6).collect();
        let mut pre = pre0.clone();
        let mut out = vec![f32::NAN; m * n];
        bias_gelu_forward(&mut pre, &bias, &mut out);
        for i in 0..m {
            for j in 0..n {
                let v = pre0[i * n + j] + bias[j];
                assert_eq!(pre[i * n + j], v);
                let r = gelu_f64(v as f64);
                let o = out[i * n + j] as f64;
                assert!(
                    (o - r).abs() <= 1e-6 * r.abs().max(1.0),
                    "({i},{j}) {o} vs {r}"
                );
            }
        }
    }

    #[test]
    fn gelu_simd_path_dense_grid() {
        // Large input: the vectorised (AVX-512 on this machine) and parallel path.
        let xs: Vec<f32> = (-800_000..800_000).map(|i| i as f32 * 1e-5).collect();
        let mut pre = xs.clone();
        let mut out = vec![0.0; xs.len()];
        bias_gelu_forward(&mut pre, &[0.0; 16], &mut out);
        let mut g = vec![1.0f32; xs.len()];
        gelu_backward(&xs, &mut g);
        let (mut wf, mut wb) = (0.0f64, 0.0f64);
        for ((&x, &o), &d) in xs.iter().zip(&out).zip(&g) {
            wf = wf.max((o as f64 - gelu_f64(x as f64)).abs());
            wb = wb.max((d as f64 - gelu_grad_f64(x as f64)).abs());
        }
        eprintln!("gelu: max abs error {wf:e}, gelu': {wb:e} (SIMD path, |x| ≤ 8)");
        // |x| ≤ 8: |gelu error| ≤ ½·|x|·|erf error| + rounding.
        assert!(wf <= 4e-6, "max |gelu error| = {wf:e}");
        assert!(wb <= 2e-6, "max |gelu' error| = {wb:e}");
    }

    #[test]
    fn gelu_backward_matches_analytic_and_finite_difference() {
        let n = 101;
        let pre: Vec<f32> = (0..n).map(|i| (i as f32 - 50.0) * 0.11).collect();
        let upstream: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut g = upstream.clone();
        gelu_backward(&pre, &mut g);
        let h = 1e-2f32;
        for i in 0..n {
            let x = pre[i];
            let analytic = upstream[i] as f64 * gelu_grad_f64(x as f64);
            assert!(
                (g[i] as f64 - analytic).abs() <= 1e-6 * analytic.abs().max(1.0),
                "x={x}"
            );
            // Central difference of the f32 forward kernel itself.
            let fd = (gelu(x + h) as f64 - gelu(x - h) as f64) / (2.0 * h as f64);
            let d = g[i] as f64 / upstream[i] as f64;
            assert!(
                (fd - d).abs() <= 1e-3 * d.abs().max(1.0),
                "x={x}: fd {fd} vs {d}"
            );
        }
    }

    #[test]
    fn gelu_extremes_and_nan() {
        assert_eq!(gelu(100.0), 100.0);
        assert_eq!(gelu(-100.0), 0.0);
        assert_eq!(gelu_grad(100.0), 1.0);
        assert!(gelu_grad(-100.0).abs() < 1e-20);
        assert_eq!(gelu_grad(1e30), 1.0);
        assert!(gelu(f32::NAN).is_nan());
        assert!(gelu_grad(f32::NAN).is_nan());
        assert!((gelu_grad(0.0) - 0.5).abs() < 1e-7);
    }
}
