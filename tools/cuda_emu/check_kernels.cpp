// Checks src/engine/cuda/kernels/ on the CPU through emu.h: attention
// forward against a direct double-precision softmax, every backward against
// central differences of that double forward, LayerNorm, GELU, the prefix
// expand/reduce pair and the bf16 rounding. Run with tools/cuda_emu/run.sh.
#include "emu.h"

#ifndef HEAD_DIM
#define HEAD_DIM 8
#endif
#include "../../src/engine/cuda/kernels/kernels.cu"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <string>

static int failures = 0;

// A hash of every checked error and compared output, bit for bit: equal in
// both thread orders (PTUNING_EMU_ORDER) unless a kernel has a race.
static u64 digest = 0xcbf29ce484222325ULL;
static void fold(const void* bytes, size_t n) {
    for (size_t i = 0; i < n; i++) digest = (digest ^ static_cast<const unsigned char*>(bytes)[i]) * 0x100000001b3ULL;
}

static void check(const char* what, double err, double tol) {
    fold(&err, sizeof err);
    bool ok = err <= tol;
    std::printf("%-58s %.3e %s\n", what, err, ok ? "ok" : "FAILED");
    if (!ok) failures++;
}

// `what` and `suffix` as one check name (valid until the next call): the
// checks a function runs for several shapes say which.
static const char* suffixed(const char* what, const std::string& suffix) {
    static std::string name;
    name = what + suffix;
    return name.c_str();
}

static std::mt19937_64 rng(7);
static std::vector<float> rand_vec(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
static u64 ptr(std::vector<float>& v) { return (u64)v.data(); }

// The larger of two errors, NaN if either is: std::max(e, NaN) is e, and
// a kernel's NaN output would pass every check that measures it so.
static double worst(double e, double x) { return std::isnan(e) || std::isnan(x) ? NAN : std::max(e, x); }

// max |a - b| / max(1, max |b|)
static double rel(const std::vector<double>& a, const std::vector<double>& b) {
    double m = 1.0, e = 0.0;
    for (size_t i = 0; i < b.size(); i++) m = std::max(m, std::fabs(b[i]));
    for (size_t i = 0; i < b.size(); i++) e = worst(e, std::fabs(a[i] - b[i]));
    return e / m;
}
template <typename T>
static std::vector<double> dbl(const std::vector<T>& v) {
    fold(v.data(), v.size() * sizeof(T));
    return std::vector<double>(v.begin(), v.end());
}

// How many of `copy` differ from the bf16 rounding of `f32` (a producer's
// bf16 copy of its own f32 output).
static double bf16_mismatches(const std::vector<float>& f32, const std::vector<u16>& copy) {
    double bad = 0;
    for (size_t i = 0; i < f32.size(); i++) bad += copy[i] != bf16_bits(f32[i]);
    return bad;
}
static u64 ptr16(std::vector<u16>& v) { return (u64)v.data(); }
// Elements of a bf16 output farther from `want` than bf16's rounding (2^-8
// relative) and `slack`·|scale[i]|: an output computed another way (the
// bf16 GELU's Φ against erff's), within that way's error.
static double bf16_far(const std::vector<float>& want, const std::vector<u16>& got, const std::vector<float>& scale,
                       double slack) {
    double bad = 0;
    for (size_t i = 0; i < want.size(); i++)
        bad += std::fabs((double)bf16_float(got[i]) - want[i]) >
               std::ldexp(std::fabs((double)want[i]), -8) + slack * std::fabs(scale[i]);
    return bad;
}

// `v` rounded to bf16: the bits, and their values in f32.
static std::vector<u16> bf16_of(const std::vector<float>& v) {
    std::vector<u16> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_bits(v[i]);
    return out;
}
static std::vector<float> f32_of(const std::vector<u16>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_float(v[i]);
    return out;
}

// Dropout site parameters (the CPU's Dropout::mask): p = 0.2.
static const float P_DROP = 0.2f;
static const u64 KEY = 0x1234567ULL ^ (5ULL * 0x9E3779B97F4A7C15ULL);
static const u64 THRESHOLD = (u64)std::ceil(P_DROP * 16777216.0f);
static const float DSCALE = 1.0f / (1.0f - P_DROP);

// ---------------------------------------------------------------------------
// Attention.
// T and N over one tile of 32: several query and key tiles, a partial last one.
const int B = 2, T = 37, P = 5, NH = 2, HD = HEAD_DIM, H = NH * HD, N = P + T;
const unsigned QUERY_TILES = (T + 31) / 32, KEY_TILES = (N + 31) / 32, PREFIX_TILES = (P + 31) / 32;

struct AttnInputs {
    std::vector<float> qkv, prefix, mask;
};

// What attention_operands writes for the attention kernels: ops [B, NH,
// T + 2N, HD] from qkv (f32, or bf16 in qkv16), its bias and the prefix
// (0: none), in f32 (fmt 0), f32 rounded to tf32 (1) or bf16 (2); with
// `minus_bias` (and t = 0) the prefix rows less the key and value biases.
struct AttnOps {
    std::vector<float> f;
    std::vector<u16> h;
    u64 ops() { return f.empty() ? 0 : (u64)f.data(); }
    u64 ops16() { return h.empty() ? 0 : (u64)h.data(); }
};
static AttnOps operands(u64 qkv, u64 qkv16, u64 bias, u64 prefix, int t, int p, int fmt, int minus_bias = 0) {
    size_t len = (size_t)B * NH * (t + 2 * (p + t)) * HD;
    AttnOps o;
    if (fmt == 2) {
        o.h.assign(len, 0);
    } else {
        o.f.assign(len, 0.0f);
    }
    // Two blocks of 64: the grid-stride loop too.
    launch(attention_operands, Dim3{2, NH, B}, 64, qkv, qkv16, bias, prefix, (u64)(p * 2 * H), (u64)(2 * H), o.ops(), o.ops16(), t, p,
           NH, 1.0f / std::sqrt((float)HD), fmt == 1 ? 1 : 0, minus_bias);
    return o;
}

// attention_delta: delta [B, NH, t] from ctx and dO (g [B*t, H] f32, or
// bf16 in g16), and the returned dO [B, NH, t, HD] in format `fmt`.
static AttnOps delta_and_dout(std::vector<float>& ctx, u64 g, u64 g16, std::vector<float>& delta, int t, int fmt) {
    AttnOps d;
    if (fmt == 2) {
        d.h.assign((size_t)B * t * H, 0);
    } else {
        d.f.assign((size_t)B * t * H, 0.0f);
    }
    launch(attention_delta, Dim3{(unsigned)(B * t * HD / 4 + 255) / 256, NH, 1}, 256, ptr(ctx), g, g16, ptr(delta),
           d.ops(), d.ops16(), B * t, NH, t, fmt == 1 ? 1 : 0);
    return d;
}

// ctx [B*T, H] in double, the definition: softmax over visible keys of
// (q·k)/sqrt(HD), dropout factor on the probabilities, times v.
static std::vector<double> attention_ref(const AttnInputs& in, bool dropout, std::vector<double>* lse = nullptr) {
    std::vector<double> ctx(B * T * H, 0.0);
    if (lse) lse->assign(B * NH * T, 0.0);
    double scale = 1.0 / std::sqrt((double)HD);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                const float* q = &in.qkv[(b * T + i) * 3 * H + h * HD];
                std::vector<double> s(N, -INFINITY);
                double mx = -INFINITY;
                for (int j = 0; j < N; j++) {
                    const float* k = j < P ? &in.prefix[(b * P + j) * 2 * H + h * HD]
                                           : &in.qkv[(b * T + j - P) * 3 * H + H + h * HD];
                    bool vis = j < P || in.mask[b * T + j - P] != 0.0f;
                    if (!vis) continue;
                    double d = 0;
                    for (int c = 0; c < HD; c++) d += (double)q[c] * k[c];
                    s[j] = d * scale;
                    mx = std::max(mx, s[j]);
                }
                double z = 0;
                for (int j = 0; j < N; j++)
                    if (s[j] > -INFINITY) z += std::exp(s[j] - mx);
                if (lse) (*lse)[(b * NH + h) * T + i] = mx + std::log(z);
                for (int j = 0; j < N; j++) {
                    if (!(s[j] > -INFINITY)) continue;
                    double pr = std::exp(s[j] - mx) / z;
                    if (dropout) pr *= drop_factor(KEY, THRESHOLD, DSCALE, (((u64)b * NH + h) * T + i) * N + j);
                    const float* v = j < P ? &in.prefix[(b * P + j) * 2 * H + H + h * HD]
                                           : &in.qkv[(b * T + j - P) * 3 * H + 2 * H + h * HD];
                    for (int c = 0; c < HD; c++) ctx[(b * T + i) * H + h * HD + c] += pr * v[c];
                }
            }
    return ctx;
}

static void check_attention(bool dropout) {
    AttnInputs in{rand_vec(B * T * 3 * H), rand_vec(B * P * 2 * H), std::vector<float>(B * T, 1.0f)};
    in.mask[1 * T + T - 1] = 0.0f;  // row 1: two padding tokens
    in.mask[1 * T + T - 2] = 0.0f;
    in.mask[0 * T + 2] = 0.0f;  // and a masked key inside row 0
    std::vector<float> ctx(B * T * H), lse(B * NH * T);
    std::vector<u16> ctx16(B * T * H);
    float scale = 1.0f / std::sqrt((float)HD);
    int on = dropout ? 1 : 0;
    AttnOps o = operands(ptr(in.qkv), 0, 0, ptr(in.prefix), T, P, 0);
    launch(attention_forward, Dim3{QUERY_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(in.mask), ptr(ctx), ptr(lse), T, P,
           NH, KEY, THRESHOLD, DSCALE, on, ptr16(ctx16));
    check("attention_forward ctx in bf16 too", bf16_mismatches(ctx, ctx16), 0.0);
    std::vector<double> want_lse;
    auto want = attention_ref(in, dropout, &want_lse);
    check(dropout ? "attention_forward ctx (dropout)" : "attention_forward ctx", rel(dbl(ctx), want), 1e-5);
    check("attention_forward lse", rel(dbl(lse), want_lse), 1e-5);

    // Backward of L = sum(ctx * G).
    auto g = rand_vec(B * T * H);
    std::vector<float> delta(B * NH * T), dqkv(B * T * 3 * H, 0.0f), dprefix(B * P * 2 * H, 0.0f);
    AttnOps d = delta_and_dout(ctx, ptr(g), 0, delta, T, 0);
    launch(attention_backward_dq, Dim3{QUERY_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(in.mask),
           d.ops(), d.ops16(), ptr(lse), ptr(delta), ptr(dqkv), T, P, NH, scale, KEY, THRESHOLD, DSCALE, on, (u64)0);
    launch(attention_backward_dkv, Dim3{KEY_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(in.mask),
           d.ops(), d.ops16(), ptr(lse), ptr(delta), ptr(dqkv), ptr(dprefix), T, P, NH, N, KEY, THRESHOLD, DSCALE, on,
           (u64)0);
    // The same gradients in bf16 (d(qkv) feeding a bf16 GEMM), d(prefix) still f32.
    std::vector<u16> dqkv16(dqkv.size());
    std::vector<float> dprefix_b(dprefix.size());
    launch(attention_backward_dq, Dim3{QUERY_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(in.mask),
           d.ops(), d.ops16(), ptr(lse), ptr(delta), (u64)0, T, P, NH, scale, KEY, THRESHOLD, DSCALE, on, ptr16(dqkv16));
    launch(attention_backward_dkv, Dim3{KEY_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(in.mask),
           d.ops(), d.ops16(), ptr(lse), ptr(delta), (u64)0, ptr(dprefix_b), T, P, NH, N, KEY, THRESHOLD, DSCALE, on,
           ptr16(dqkv16));
    check("attention backward d(qkv) in bf16 instead", bf16_mismatches(dqkv, dqkv16) + (dprefix_b != dprefix), 0.0);
    auto loss = [&](const AttnInputs& x) {
        auto c = attention_ref(x, dropout);
        double l = 0;
        for (size_t k = 0; k < c.size(); k++) l += c[k] * g[k];
        return l;
    };
    // Central differences of the double loss at up to 400 evenly spaced
    // elements of `field`, against `got` there: max |Δ| / max(1, max |fd|).
    auto fd_err = [&](std::vector<float> AttnInputs::*field, const std::vector<float>& got) {
        size_t n = (in.*field).size(), stride = std::max<size_t>(1, n / 400);
        std::vector<double> want, have;
        for (size_t k = 0; k < n; k += stride) {
            AttnInputs x = in;
            float e = 1e-3f;
            (x.*field)[k] += e;
            double up = loss(x);
            (x.*field)[k] -= 2 * e;
            double down = loss(x);
            want.push_back((up - down) / (2 * e));
            have.push_back(got[k]);
        }
        return rel(have, want);
    };
    check(dropout ? "attention backward d(qkv) vs differences (dropout)" : "attention backward d(qkv) vs differences",
          fd_err(&AttnInputs::qkv, dqkv), 2e-3);
    check("attention backward d(prefix) vs differences", fd_err(&AttnInputs::prefix, dprefix), 2e-3);

    // The lowest prefixed layer: prefix keys only, no d(qkv).
    std::vector<float> dprefix2(B * P * 2 * H, 0.0f);
    launch(attention_backward_dkv, Dim3{PREFIX_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(in.mask),
           d.ops(), d.ops16(), ptr(lse), ptr(delta), (u64)0, ptr(dprefix2), T, P, NH, P, KEY, THRESHOLD, DSCALE, on, (u64)0);
    check("attention backward, prefix keys only", rel(dbl(dprefix2), dbl(dprefix)), 0.0);
}

// No prefix (a layer below the prompt) and a row of only padding: HF's
// uniform row.
static void check_attention_no_prefix() {
    std::vector<float> qkv = rand_vec(B * T * 3 * H), mask(B * T, 1.0f), ctx(B * T * H);
    for (int t = 0; t < T; t++) mask[1 * T + t] = 0.0f;
    AttnOps o = operands(ptr(qkv), 0, 0, 0, T, 0, 0);
    launch(attention_forward, Dim3{QUERY_TILES, NH, B}, 64, o.ops(), o.ops16(), ptr(mask), ptr(ctx), (u64)0, T, 0, NH,
           KEY, THRESHOLD, DSCALE, 0, (u64)0);
    // Row 1 attends uniformly to its T value rows.
    double err = 0;
    for (int h = 0; h < NH; h++)
        for (int c = 0; c < HD; c++) {
            double mean = 0;
            for (int j = 0; j < T; j++) mean += qkv[(1 * T + j) * 3 * H + 2 * H + h * HD + c] / (double)T;
            for (int i = 0; i < T; i++) err = worst(err, std::fabs(ctx[(1 * T + i) * H + h * HD + c] - mean));
        }
    check("attention of an all-padding row without prefix is uniform", err, 1e-5);
}

// The tensor-core kernels of one format: their fragment layout (the
// format's self-test), then the whole chain (forward, delta, dQ, dK/dV)
// against the f32 kernels (checked against the definition above) over two
// query tiles and two key tiles with partial last ones, masked keys,
// dropout, and a padding-only row without prefix. The format's rounding of
// q, k, v, dO, P and dS bounds the differences (`tol_out`, `tol_grad`).
// qkv [rows, 3H] with `bias` [3H] added to every row, in f32.
static std::vector<float> with_bias(const std::vector<float>& qkv, const std::vector<float>& bias, int rows) {
    std::vector<float> out = qkv;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < 3 * H; c++) out[(size_t)r * 3 * H + c] += bias[c];
    return out;
}

struct AttnChain {
    std::vector<float> ctx, lse, dqkv, dprefix, dprefix_only;
    bool operator!=(const AttnChain& o) const {
        return ctx != o.ctx || lse != o.lse || dqkv != o.dqkv || dprefix != o.dprefix || dprefix_only != o.dprefix_only;
    }
};

// qkv and dO read from their bf16 copies (the bf16 GEMMs' outputs) equal,
// bit for bit, the f32 values of those copies read as f32; with NaN f32
// buffers beside them, so a read of the wrong one shows.
template <typename Fwd, typename Dq, typename Dkv>
static double bf16_inputs_mismatch(Fwd fwd, Dq dq, Dkv dkv, unsigned tile, unsigned block, int fmt);

// The chain on operands of format `fmt` (attention_operands' formats).
template <typename Fwd, typename Dq, typename Dkv>
static AttnChain run_chain(Fwd fwd, Dq dq, Dkv dkv, unsigned tile, unsigned block, int fmt, std::vector<float>& qkv,
                           u64 qkv16, u64 bias, std::vector<float>& prefix, std::vector<float>& mask,
                           std::vector<float>& g, int t, int p, int on, u64 g16 = 0) {
    AttnChain c{std::vector<float>(B * t * H), std::vector<float>(B * NH * t), std::vector<float>(B * t * 3 * H, 0.0f),
                std::vector<float>(B * std::max(p, 1) * 2 * H, 0.0f), std::vector<float>(B * std::max(p, 1) * 2 * H, 0.0f)};
    float scale = 1.0f / std::sqrt((float)HD);
    AttnOps o = operands(ptr(qkv), qkv16, bias, p > 0 ? ptr(prefix) : 0, t, p, fmt);
    unsigned qt = (t + tile - 1) / tile, kt = (p + t + tile - 1) / tile;
    launch(fwd, Dim3{qt, NH, B}, block, o.ops(), o.ops16(), ptr(mask), ptr(c.ctx), ptr(c.lse), t, p, NH, KEY, THRESHOLD,
           DSCALE, on, (u64)0);
    std::vector<float> delta(B * NH * t);
    AttnOps d = delta_and_dout(c.ctx, ptr(g), g16, delta, t, fmt);
    launch(dq, Dim3{qt, NH, B}, block, o.ops(), o.ops16(), ptr(mask), d.ops(), d.ops16(), ptr(c.lse), ptr(delta), ptr(c.dqkv),
           t, p, NH, scale, KEY, THRESHOLD, DSCALE, on, (u64)0);
    launch(dkv, Dim3{kt, NH, B}, block, o.ops(), o.ops16(), ptr(mask), d.ops(), d.ops16(), ptr(c.lse), ptr(delta), ptr(c.dqkv),
           ptr(c.dprefix), t, p, NH, p + t, KEY, THRESHOLD, DSCALE, on, (u64)0);
    if (p > 0)
        launch(dkv, Dim3{(p + tile - 1) / tile, NH, B}, block, o.ops(), o.ops16(), ptr(mask), d.ops(), d.ops16(), ptr(c.lse),
               ptr(delta), (u64)0, ptr(c.dprefix_only), t, p, NH, p, KEY, THRESHOLD, DSCALE, on, (u64)0);
    return c;
}

template <typename SelfTest, typename Fwd, typename Dq, typename Dkv>
static void check_attention_tc(const char* fmt, int k, int ops_fmt, SelfTest self_test, Fwd fwd, Dq dq, Dkv dkv,
                               double tol_out, double tol_grad) {
    char what[96];
    // S = A·Bᵀ [16, 16] then O = W·B [16, HD] (attention_mma.cuh's mma_self_test).
    std::vector<float> d(16 * 16 + 16 * HEAD_DIM, -1.0f);
    launch(self_test, Dim3{1, 1, 1}, 32, ptr(d));
    auto a = [](int r, int k) { return (r + 2 * k) % 7 - 3; };
    auto b = [](int j, int k) { return (3 * k + j) % 5 - 2; };
    auto w = [](int r, int j) { return (r + 3 * j) % 5 - 2; };
    double bad = 0;
    for (int r = 0; r < 16; r++) {
        for (int j = 0; j < 16; j++) {
            int want = 0;
            for (int kk = 0; kk < HEAD_DIM; kk++) want += a(r, kk) * b(j, kk);
            bad += d[r * 16 + j] != (float)want;
        }
        for (int c = 0; c < HEAD_DIM; c++) {
            int want = 0;
            for (int j = 0; j < 16; j++) want += w(r, j) * b(j, c);
            bad += d[16 * 16 + r * HEAD_DIM + c] != (float)want;
        }
    }
    std::snprintf(what, sizeof what, "mma_self_test_%s (m16n8k%d fragments and tile loads)", fmt, k);
    check(what, bad, 0.0);
    for (int p : {5, 0})
        for (int on : {0, 1}) {
            const int t = 70;
            auto qkv = rand_vec(B * t * 3 * H), prefix = rand_vec(B * std::max(p, 1) * 2 * H), g = rand_vec(B * t * H);
            std::vector<float> mask(B * t, 1.0f);
            for (int i = p > 0 ? t - 9 : 0; i < t; i++) mask[1 * t + i] = 0.0f;
            mask[0 * t + 40] = 0.0f;
            // Their operands with the bias added as read; the f32 kernels'
            // with it added before (the same sums: check_qkv_bias).
            auto bias = rand_vec(3 * H), biased = with_bias(qkv, bias, B * t);
            auto want = run_chain(attention_forward, attention_backward_dq, attention_backward_dkv, 32, 64, 0, biased,
                                  0, 0, prefix, mask, g, t, p, on);
            auto got = run_chain(fwd, dq, dkv, 64, 128, ops_fmt, qkv, 0, ptr(bias), prefix, mask, g, t, p, on);
            std::snprintf(what, sizeof what, "attention on tensor cores (%s), %s%s: ctx", fmt,
                          p > 0 ? "prefix 5, T 70" : "no prefix, padding row", on ? ", dropout" : "");
            check(what, rel(dbl(got.ctx), dbl(want.ctx)), tol_out);
            check("  lse", rel(dbl(got.lse), dbl(want.lse)), tol_out);
            check("  d(qkv)", rel(dbl(got.dqkv), dbl(want.dqkv)), tol_grad);
            check("  d(prefix), and of the prefix keys alone",
                  worst(rel(dbl(got.dprefix), dbl(want.dprefix)), rel(dbl(got.dprefix_only), dbl(want.dprefix))),
                  tol_grad);
        }
    // bf16 outputs: ctx16 and dqkv16 are the f32 results rounded.
    const int t = 70, p = 5;
    auto qkv = rand_vec(B * t * 3 * H), prefix = rand_vec(B * p * 2 * H), g = rand_vec(B * t * H);
    std::vector<float> mask(B * t, 1.0f), ctx(B * t * H), lse(B * NH * t), delta(B * NH * t),
        dqkv(B * t * 3 * H), dpre(B * p * 2 * H), dpre16(B * p * 2 * H);
    std::vector<u16> ctx16(B * t * H), dqkv16(B * t * 3 * H);
    float scale = 1.0f / std::sqrt((float)HD);
    AttnOps o = operands(ptr(qkv), 0, 0, ptr(prefix), t, p, ops_fmt);
    launch(fwd, Dim3{2, NH, B}, 128, o.ops(), o.ops16(), ptr(mask), ptr(ctx), ptr(lse), t, p, NH, KEY, THRESHOLD,
           DSCALE, 1, ptr16(ctx16));
    AttnOps dout = delta_and_dout(ctx, ptr(g), 0, delta, t, ops_fmt);
    for (int pass = 0; pass < 2; pass++) {
        u64 out = pass ? 0 : ptr(dqkv), out16 = pass ? ptr16(dqkv16) : 0;
        launch(dq, Dim3{2, NH, B}, 128, o.ops(), o.ops16(), ptr(mask), dout.ops(), dout.ops16(), ptr(lse),
               ptr(delta), out, t, p, NH, scale, KEY, THRESHOLD, DSCALE, 1, out16);
        launch(dkv, Dim3{2, NH, B}, 128, o.ops(), o.ops16(), ptr(mask), dout.ops(), dout.ops16(), ptr(lse),
               ptr(delta), out, pass ? ptr(dpre16) : ptr(dpre), t, p, NH, p + t, KEY, THRESHOLD, DSCALE, 1,
               out16);
    }
    std::snprintf(what, sizeof what, "tensor-core attention (%s): ctx and d(qkv) in bf16 too", fmt);
    check(what, bf16_mismatches(ctx, ctx16) + bf16_mismatches(dqkv, dqkv16) + (dpre != dpre16), 0.0);
    std::snprintf(what, sizeof what, "tensor-core attention (%s): qkv, dO read in bf16 = in f32", fmt);
    check(what, bf16_inputs_mismatch(fwd, dq, dkv, 64, 128, ops_fmt), 0.0);
}

template <typename Fwd, typename Dq, typename Dkv>
static double bf16_inputs_mismatch(Fwd fwd, Dq dq, Dkv dkv, unsigned tile, unsigned block, int fmt) {
    const int t = 70, p = 5;
    auto qkv16 = bf16_of(rand_vec(B * t * 3 * H)), g16 = bf16_of(rand_vec(B * t * H));
    auto qkv = f32_of(qkv16), g = f32_of(g16), bias = rand_vec(3 * H), prefix = rand_vec(B * p * 2 * H);
    std::vector<float> nan(qkv.size(), std::nanf("")), nan_g(g.size(), std::nanf("")), mask(B * t, 1.0f);
    for (int i = t - 9; i < t; i++) mask[1 * t + i] = 0.0f;
    auto want = run_chain(fwd, dq, dkv, tile, block, fmt, qkv, 0, ptr(bias), prefix, mask, g, t, p, 1);
    auto got = run_chain(fwd, dq, dkv, tile, block, fmt, nan, ptr16(qkv16), ptr(bias), prefix, mask, nan_g, t, p, 1,
                         ptr16(g16));
    return got != want;
}

// The qkv bias added as the f32 kernels read qkv equals it added beforehand,
// bit for bit: forward, dQ, dK/dV, with dropout and a prefix.
static void check_qkv_bias() {
    const int t = 70, p = 5;
    auto qkv = rand_vec(B * t * 3 * H), bias = rand_vec(3 * H), prefix = rand_vec(B * p * 2 * H),
         g = rand_vec(B * t * H), biased = with_bias(qkv, bias, B * t);
    std::vector<float> mask(B * t, 1.0f);
    for (int i = t - 9; i < t; i++) mask[1 * t + i] = 0.0f;
    auto want = run_chain(attention_forward, attention_backward_dq, attention_backward_dkv, 32, 64, 0, biased, 0, 0,
                          prefix, mask, g, t, p, 1);
    auto got = run_chain(attention_forward, attention_backward_dq, attention_backward_dkv, 32, 64, 0, qkv, 0, ptr(bias),
                         prefix, mask, g, t, p, 1);
    check("qkv bias added as read = added before (f32 kernels)", got != want, 0.0);
    check("qkv, dO read in bf16 = their values in f32 (f32 kernels)",
          bf16_inputs_mismatch(attention_forward, attention_backward_dq, attention_backward_dkv, 32, 64, 0), 0.0);
}

#if HEAD_DIM % 16 == 0
// attention_forward_qkv_bf16 against the f32 kernels on the same values
// (qkv in bf16, its bias added in f32), with and without a prefix and
// dropout; against attention_forward_bf16 on attention_operands' bf16
// operands; its ctx16, ctx rounded.
static void check_attention_qkv_bf16() {
    char what[96];
    const int t = 70;
    float scale = 1.0f / std::sqrt((float)HD);
    for (int p : {5, 0})
        for (int on : {0, 1}) {
            auto qkv16 = bf16_of(rand_vec(B * t * 3 * H));
            auto qkv = f32_of(qkv16), bias = rand_vec(3 * H), prefix = rand_vec(B * std::max(p, 1) * 2 * H),
                 g = rand_vec(B * t * H);
            std::vector<float> mask(B * t, 1.0f), ctx(B * t * H);
            std::vector<u16> ctx16(B * t * H);
            for (int i = p > 0 ? t - 9 : 0; i < t; i++) mask[1 * t + i] = 0.0f;
            mask[0 * t + 40] = 0.0f;
            auto biased = with_bias(qkv, bias, B * t);
            auto want = run_chain(attention_forward, attention_backward_dq, attention_backward_dkv, 32, 64, 0, biased, 0,
                                  0, prefix, mask, g, t, p, on);
            // The prefix rows alone, less the biases, as the engine has
            // attention_operands write them.
            AttnOps pre = operands(0, 0, ptr(bias), p > 0 ? ptr(prefix) : 0, 0, p, 2, 1);
            launch(attention_forward_qkv_bf16, Dim3{2, NH, B}, 128, ptr16(qkv16), ptr(bias), pre.ops16(), 0, ptr(mask),
                   ptr(ctx), t, p, NH, scale, KEY, THRESHOLD, DSCALE, on, ptr16(ctx16));
            std::snprintf(what, sizeof what, "attention from qkv (bf16), %s%s: ctx",
                          p > 0 ? "prefix 5, T 70" : "no prefix, padding row", on ? ", dropout" : "");
            check(what, rel(dbl(ctx), dbl(want.ctx)), 2e-2);
            check("  ctx16 is ctx rounded", bf16_mismatches(ctx, ctx16), 0.0);
            if (p > 0 && !on) {
                // One prefix for every row: batch row 0's operands, written
                // alone from the table read with a batch stride of 0 (as
                // inference reads the prefix table), give the rows the same
                // as each its own copy.
                std::vector<float> shared_prefix = prefix;
                for (int b = 1; b < B; b++)
                    std::copy(prefix.begin(), prefix.begin() + p * 2 * H, shared_prefix.begin() + b * p * 2 * H);
                AttnOps own = operands(0, 0, ptr(bias), ptr(shared_prefix), 0, p, 2, 1);
                AttnOps one;
                one.h.assign(own.h.size(), 0);
                launch(attention_operands, Dim3{1, NH, 1}, 64, (u64)0, (u64)0, ptr(bias), ptr(shared_prefix), (u64)0,
                       (u64)(2 * H), (u64)0, one.ops16(), 0, p, NH, 1.0f, 0, 1);
                std::vector<float> ctx_own(B * t * H), ctx_one(B * t * H);
                launch(attention_forward_qkv_bf16, Dim3{2, NH, B}, 128, ptr16(qkv16), ptr(bias), own.ops16(), 0,
                       ptr(mask), ptr(ctx_own), t, p, NH, scale, KEY, THRESHOLD, DSCALE, 0, (u64)0);
                launch(attention_forward_qkv_bf16, Dim3{2, NH, B}, 128, ptr16(qkv16), ptr(bias), one.ops16(), 1,
                       ptr(mask), ptr(ctx_one), t, p, NH, scale, KEY, THRESHOLD, DSCALE, 0, (u64)0);
                check("  one prefix for all rows = a copy in each", rel(dbl(ctx_one), dbl(ctx_own)), 0.0);
            }
            if (p == 0 || !on) continue;
            // The two bf16 kernels round different sums to bf16: the tokens'
            // k + b_k and v + b_v there (attention_operands), the prefix's
            // k - b_k and v - b_v here.
            auto unfused = run_chain(attention_forward_bf16, attention_backward_dq_bf16, attention_backward_dkv_bf16, 64,
                                     128, 2, qkv, 0, ptr(bias), prefix, mask, g, t, p, on);
            check("  ctx against attention_forward_bf16's", rel(dbl(ctx), dbl(unfused.ctx)), 1e-2);
        }
}
#endif

// tf32 and tf32x3 where the head size is a multiple of 8, bf16 where it is
// one of 16.
static void check_attention_mma() {
#if HEAD_DIM % 8 == 0
    check_attention_tc("tf32", 8, 1, mma_self_test_tf32, attention_forward_tf32, attention_backward_dq_tf32,
                       attention_backward_dkv_tf32, 3e-3, 5e-3);
    // fp32 by 3xTF32: f32 accuracy, where one tf32 product is 3e-3 off.
    check_attention_tc("tf32x3", 8, 0, mma_self_test_tf32x3, attention_forward_tf32x3, attention_backward_dq_tf32x3,
                       attention_backward_dkv_tf32x3, 1e-5, 1e-5);
#endif
#if HEAD_DIM % 16 == 0
    check_attention_tc("bf16", 16, 2, mma_self_test_bf16, attention_forward_bf16, attention_backward_dq_bf16,
                       attention_backward_dkv_bf16, 2e-2, 3e-2);
    check_attention_qkv_bf16();
#endif
    if (HEAD_DIM % 16 != 0)
        std::printf("attention on tensor cores (%s): skipped (HEAD_DIM %d is not a multiple of %d)\n",
                    HEAD_DIM % 8 != 0 ? "tf32, tf32x3, bf16" : "bf16", HEAD_DIM, HEAD_DIM % 8 != 0 ? 8 : 16);
}

// ---------------------------------------------------------------------------
// LayerNorm, GELU, prefix, bf16.

// Rows of 40 are a warp's each (launched a block per row: the warps past
// the last row have none); rows of 1100 a block's (kernels/layernorm.cuh).
static void check_layernorm(const int rows, const int h) {
    const bool wide = h > 1024;
    auto name = [&](const char* what) { return suffixed(what, h != 40 ? ", h " + std::to_string(h) : ""); };
    auto y = rand_vec(rows * h), bias = rand_vec(h), res = rand_vec(rows * h), gamma = rand_vec(h), beta = rand_vec(h);
    std::vector<float> ln_in = y, x(rows * h), stats(rows * 2);
    std::vector<u16> x16(rows * h);
    float eps = 1e-12f;
    launch(bias_dropout_residual_layernorm, Dim3{(unsigned)rows, 1, 1}, 256, ptr(ln_in), (u64)0, ptr(bias), ptr(res), ptr(gamma),
           ptr(beta), eps, ptr(x), ptr(stats), h, KEY, THRESHOLD, DSCALE, 1, ptr16(x16), (u64)rows);
    check(name("LayerNorm output in bf16 too"), bf16_mismatches(x, x16), 0.0);
    std::vector<double> want_in(rows * h), want_x(rows * h);
    for (int r = 0; r < rows; r++) {
        double mean = 0, var = 0;
        for (int j = 0; j < h; j++) {
            double v = (double)y[r * h + j] + bias[j];
            v *= drop_factor(KEY, THRESHOLD, DSCALE, (u64)r * h + j);
            want_in[r * h + j] = v + res[r * h + j];
            mean += want_in[r * h + j] / h;
        }
        for (int j = 0; j < h; j++) var += (want_in[r * h + j] - mean) * (want_in[r * h + j] - mean) / h;
        for (int j = 0; j < h; j++)
            want_x[r * h + j] = (want_in[r * h + j] - mean) / std::sqrt(var + eps) * gamma[j] + beta[j];
    }
    check(name("bias + dropout + residual (LayerNorm input)"), rel(dbl(ln_in), want_in), 1e-6);
    check(name("LayerNorm forward"), rel(dbl(x), want_x), 1e-5);
    // Where nothing is saved (no stats), y stays as it was; with 32 threads
    // (a warp, a row).
    std::vector<float> y2 = y, x2(rows * h);
    if (!wide) launch(bias_dropout_residual_layernorm, Dim3{(unsigned)rows, 1, 1}, 32, ptr(y2), (u64)0, ptr(bias), ptr(res), ptr(gamma),
           ptr(beta), eps, ptr(x2), (u64)0, h, KEY, THRESHOLD, DSCALE, 1, (u64)0, (u64)rows);
    if (!wide) check(name("LayerNorm forward, nothing saved, 32 threads"), rel(dbl(x2), want_x) + (y2 != y), 1e-5);
    // Inference's kernel (no dropout, nothing saved; a warp a row, 4 rows a
    // block; 4-wide accesses) gives the bits of the kernel above without
    // dropout, from y in f32 and in bf16, and leaves y as it was.
    if (!wide && h % 4 == 0) {
        const unsigned blocks = (unsigned)((rows + 3) / 4);
        auto y16i = bf16_of(y);
        for (int from16 = 0; from16 < 2; from16++) {
            u64 y16p = from16 ? ptr16(y16i) : (u64)0;
            std::vector<float> yi = y, want(rows * h), got(rows * h);
            std::vector<u16> want16(rows * h), got16(rows * h);
            launch(bias_dropout_residual_layernorm, Dim3{blocks, 1, 1}, 128, ptr(yi), y16p, ptr(bias), ptr(res),
                   ptr(gamma), ptr(beta), eps, ptr(want), (u64)0, h, KEY, THRESHOLD, DSCALE, 0, ptr16(want16),
                   (u64)rows);
            launch(residual_layernorm, Dim3{blocks, 1, 1}, 128, ptr(yi), y16p, ptr(bias), ptr(res), ptr(gamma),
                   ptr(beta), eps, ptr(got), h, ptr16(got16), (u64)rows);
            check(name(from16 ? "inference LayerNorm (y in bf16) = the training kernel without dropout"
                              : "inference LayerNorm = the training kernel without dropout"),
                  (got != want) + (got16 != want16) + (yi != y), 0.0);
        }
        // bf16 inference's residual stream: the residual read in bf16 gives
        // the bits of the f32 kernel reading its values; x16 alone, or (the
        // last layer's) x_out alone.
        auto res16 = bf16_of(res);
        std::vector<float> res_r = f32_of(res16), want(rows * h), got(rows * h, -7.0f);
        std::vector<u16> want16(rows * h), got16(rows * h);
        launch(residual_layernorm, Dim3{blocks, 1, 1}, 128, (u64)0, ptr16(y16i), ptr(bias), ptr(res_r), ptr(gamma),
               ptr(beta), eps, ptr(want), h, ptr16(want16), (u64)rows);
        launch(residual16_layernorm, Dim3{blocks, 1, 1}, 128, ptr16(y16i), ptr(bias), ptr16(res16), ptr(gamma),
               ptr(beta), eps, ptr16(got16), h, (u64)rows);
        launch(residual16_layernorm_f32, Dim3{blocks, 1, 1}, 128, ptr16(y16i), ptr(bias), ptr16(res16), ptr(gamma),
               ptr(beta), eps, ptr(got), h, (u64)rows);
        check(name("inference LayerNorm of a bf16 residual = of its values in f32 (x16, x_out)"),
              (got16 != want16) + (got != want), 0.0);
    }
    // y from its bf16 copy (the bf16 GEMM's output) = its values read as
    // f32, bit for bit; the saved LayerNorm input still goes to y.
    auto y16 = bf16_of(y);
    std::vector<float> y_r = f32_of(y16), x_r(rows * h), s_r(rows * 2), in16(rows * h, -3.0f), x_16(rows * h),
                       s_16(rows * 2);
    launch(bias_dropout_residual_layernorm, Dim3{(unsigned)rows, 1, 1}, 256, ptr(y_r), (u64)0, ptr(bias), ptr(res), ptr(gamma),
           ptr(beta), eps, ptr(x_r), ptr(s_r), h, KEY, THRESHOLD, DSCALE, 1, (u64)0, (u64)rows);
    launch(bias_dropout_residual_layernorm, Dim3{(unsigned)rows, 1, 1}, 256, ptr(in16), ptr16(y16), ptr(bias), ptr(res),
           ptr(gamma), ptr(beta), eps, ptr(x_16), ptr(s_16), h, KEY, THRESHOLD, DSCALE, 1, (u64)0, (u64)rows);
    check(name("LayerNorm of y read in bf16 = of its values in f32"),
          (x_16 != x_r) + (s_16 != s_r) + (in16 != y_r), 0.0);

    auto dy = rand_vec(rows * h);
    std::vector<float> dx(rows * h), kept(rows * h);
    launch(layernorm_backward, Dim3{(unsigned)rows, 1, 1}, 256, ptr(dy), ptr(ln_in), ptr(gamma), ptr(stats), ptr(dx), h, KEY,
           THRESHOLD, DSCALE, 0, ptr(kept), (u64)0, (u64)rows);
    // The dropout site before the LayerNorm, fused: dropout(dx) = what
    // dropout_copy gives from dx, in f32 or in bf16 instead.
    std::vector<float> dx2(rows * h), dropped(rows * h), dropped_b(rows * h, -5.0f), want_dropped(rows * h);
    std::vector<u16> dropped16(rows * h);
    launch(layernorm_backward, Dim3{(unsigned)rows, 1, 1}, 256, ptr(dy), ptr(ln_in), ptr(gamma), ptr(stats), ptr(dx2), h, KEY,
           THRESHOLD, DSCALE, 1, ptr(dropped), (u64)0, (u64)rows);
    launch(layernorm_backward, Dim3{(unsigned)rows, 1, 1}, 256, ptr(dy), ptr(ln_in), ptr(gamma), ptr(stats), ptr(dx2), h, KEY,
           THRESHOLD, DSCALE, 1, ptr(dropped_b), ptr16(dropped16), (u64)rows);
    launch(dropout_copy, Dim3{1, 1, 1}, 256, ptr(dx), ptr(want_dropped), (u64)(rows * h), KEY, THRESHOLD, DSCALE, 1,
           (u64)0);
    check(name("LayerNorm backward + dropout = then dropout_copy, f32 and bf16"),
          (kept != dx) + (dx2 != dx) + (dropped != want_dropped) + bf16_mismatches(want_dropped, dropped16) +
              (dropped_b != std::vector<float>(rows * h, -5.0f)),
          0.0);
    std::vector<double> want_dx(rows * h);
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < h; k++) {
            auto f = [&](double delta) {
                std::vector<double> row(h);
                double mean = 0, var = 0, l = 0;
                for (int j = 0; j < h; j++) row[j] = ln_in[r * h + j] + (j == k ? delta : 0.0), mean += row[j] / h;
                for (int j = 0; j < h; j++) var += (row[j] - mean) * (row[j] - mean) / h;
                for (int j = 0; j < h; j++) l += ((row[j] - mean) / std::sqrt(var + eps) * gamma[j] + beta[j]) * dy[r * h + j];
                return l;
            };
            want_dx[r * h + k] = (f(1e-5) - f(-1e-5)) / 2e-5;
        }
    check(name("LayerNorm backward vs differences"), rel(dbl(dx), want_dx), 1e-4);
}

// The exact GELU, x·Φ(x), and Φ.
static double normal_cdf(double x) { return 0.5 * (1 + std::erf(x / std::sqrt(2.0))); }
static double exact_gelu(double x) { return x * normal_cdf(x); }

// gelu_bf16 (the bf16 outputs' GELU) against the exact GELU at every 2^-12
// in [-12, 12]: within 1e-5 of its value where |x| <= 6 (the fit's 9.1e-6),
// and beyond, where it takes Φ(-6) for Φ(-|x|), within 1e-9·|x|; its
// derivative gelu_grad_bf16 within 1e-5.
static void check_gelu_bf16() {
    double near = 0, far = 0, grad = 0;
    for (int i = -12 * 4096; i <= 12 * 4096; i++) {
        double x = i / 4096.0, cdf = normal_cdf(x), g = x * cdf;
        double got = gelu_bf16((float)x);
        if (std::fabs(x) <= 6) {
            if (g != 0) near = worst(near, std::fabs(got - g) / std::fabs(g));
        } else {
            far = worst(far, std::fabs(got - g) / std::fabs(x));
        }
        double dg = cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
        grad = worst(grad, std::fabs(gelu_grad_bf16((float)x) - dg));
    }
    check("bf16 GELU's Φ by its fitted log2, relative error for |x| <= 6", near, 1e-5);
    check("bf16 GELU past |x| = 6, error / |x|", far, 1e-9);
    check("bf16 GELU's derivative", grad, 1e-5);
}

// Rows of 50 go one element at a time, rows of 52 four (kernels/activations.cuh).
static void check_gelu(const int w) {
    const int rows = 3;
    auto name = [&](const char* what) { return suffixed(what, w % 4 == 0 ? ", 4 at a time" : ""); };
    auto pre = rand_vec(rows * w, 2.0f), bias = rand_vec(w);
    std::vector<float> act(rows * w);
    auto pre0 = pre, pre_b = pre;
    launch(bias_gelu, Dim3{1, 1, 1}, 256, ptr(pre), (u64)0, ptr(bias), ptr(pre), ptr(act), (u64)(rows * w), w, (u64)0);
    // In bf16 the activation goes to its bf16 copy alone; with nothing
    // saved the input stays as it was.
    std::vector<float> act_b(rows * w, -7.0f);
    std::vector<u16> act16(rows * w);
    launch(bias_gelu, Dim3{1, 1, 1}, 256, ptr(pre_b), (u64)0, ptr(bias), (u64)0, ptr(act_b), (u64)(rows * w), w,
           ptr16(act16));
    // (gelu_bf16 there: within bf16's rounding of the exact GELU, 2^-8
    // relative, plus its own error, as check_gelu_bf16 finds it: 1e-5
    // relative where |x| <= 6, 1e-9·|x| past it.)
    int off = 0;
    for (int i = 0; i < rows * w; i++) {
        double v = (double)pre0[i] + bias[i % w], g = exact_gelu(v);
        double e = std::fabs(bf16_float(act16[i]) - g);
        off += e > std::ldexp(1.0, -8) * std::fabs(g) + (std::fabs(v) <= 6 ? 1e-5 * std::fabs(g) : 1e-9 * std::fabs(v));
    }
    check(name("bias + GELU into bf16 instead, input kept"),
          off + (pre_b != pre0) + (act_b != std::vector<float>(rows * w, -7.0f)), 0.0);
    // The input from its bf16 copy (the bf16 GEMM's output) = its values in
    // f32, and GELU's backward at that copy plus the bias = at the saved sum.
    auto pre16 = bf16_of(pre0);
    std::vector<float> pre_r = f32_of(pre16), act_r(rows * w), act_16(rows * w), nan(rows * w, std::nanf(""));
    launch(bias_gelu, Dim3{1, 1, 1}, 256, ptr(pre_r), (u64)0, ptr(bias), ptr(pre_r), ptr(act_r), (u64)(rows * w), w,
           (u64)0);
    launch(bias_gelu, Dim3{1, 1, 1}, 256, ptr(nan), ptr16(pre16), ptr(bias), (u64)0, ptr(act_16), (u64)(rows * w), w,
           (u64)0);
    // The incoming gradient in bf16 too (the bf16 GEMM's output); d itself
    // is neither read nor written.
    auto dy16 = bf16_of(rand_vec(rows * w));
    std::vector<float> dy_r = f32_of(dy16), dr = dy_r, d_16(rows * w, std::nanf(""));
    std::vector<u16> out16(rows * w);
    launch(gelu_backward, Dim3{1, 1, 1}, 256, ptr(pre_r), (u64)0, (u64)0, ptr(dr), (u64)0, (u64)(rows * w), w,
           (u64)0);
    launch(gelu_backward, Dim3{1, 1, 1}, 256, ptr(nan), ptr16(pre16), ptr(bias), ptr(d_16), ptr16(dy16),
           (u64)(rows * w), w, ptr16(out16));
    // bf16 in and out, 8 at a time (rows a multiple of 8 wide): bias_gelu's
    // bits; 4 threads, so that each walks the rows and its column wraps.
    if (w % 8 == 0) {
        std::vector<u16> want16(rows * w), got16(rows * w);
        launch(bias_gelu, Dim3{1, 1, 1}, 256, ptr(nan), ptr16(pre16), ptr(bias), (u64)0, ptr(nan), (u64)(rows * w), w,
               ptr16(want16));
        launch(bias_gelu_bf16, Dim3{1, 1, 1}, 4, ptr16(pre16), ptr(bias), ptr16(got16), (u64)(rows * w), w);
        check("bias + GELU, bf16 8 at a time = bias_gelu's", got16 != want16, 0.0);
    }
    // (The backward's bf16 output by gelu_grad_bf16: within 1e-5·|dy|.)
    check(name("bias + GELU and its backward from bf16 = from its values"),
          (act_16 != act_r) + bf16_far(dr, out16, dy_r, 1e-5) +
              std::count_if(d_16.begin(), d_16.end(), [](float v) { return !std::isnan(v); }),
          0.0);
    double err = 0;
    for (int i = 0; i < rows * w; i++) {
        double v = (double)pre0[i] + bias[i % w];
        err = worst(err, std::fabs(act[i] - exact_gelu(v)));
    }
    check(name("bias + GELU (erf)"), err, 1e-6);
    std::vector<float> d(rows * w, 1.0f), d_b(rows * w, 1.0f);
    std::vector<u16> d16(rows * w);
    launch(gelu_backward, Dim3{1, 1, 1}, 256, ptr(pre), (u64)0, (u64)0, ptr(d), (u64)0, (u64)(rows * w), w, (u64)0);
    launch(gelu_backward, Dim3{1, 1, 1}, 256, ptr(pre), (u64)0, (u64)0, ptr(d_b), (u64)0, (u64)(rows * w), w,
           ptr16(d16));
    check(name("GELU backward into bf16 instead"),
          bf16_far(d, d16, d_b, 1e-5) + (d_b != std::vector<float>(rows * w, 1.0f)), 0.0);
    err = 0;
    for (int i = 0; i < rows * w; i++) {
        double x = pre[i];
        err = worst(err, std::fabs(d[i] - (exact_gelu(x + 1e-5) - exact_gelu(x - 1e-5)) / 2e-5));
    }
    check(name("GELU backward vs differences"), err, 1e-5);
}

// The pooler's tanh and its backward.
static void check_tanh() {
    const int rows = 3, w = 50;
    auto y = rand_vec(rows * w, 2.0f), bias = rand_vec(w), d = rand_vec(rows * w);
    auto y0 = y, d0 = d;
    launch(bias_tanh, Dim3{1, 1, 1}, 256, ptr(y), ptr(bias), (u64)(rows * w), w);
    launch(tanh_backward, Dim3{1, 1, 1}, 256, ptr(y), ptr(d), (u64)(rows * w));
    double err = 0, err_d = 0;
    for (int i = 0; i < rows * w; i++) {
        double x = (double)y0[i] + bias[i % w];
        err = worst(err, std::fabs(y[i] - std::tanh(x)));
        double slope = (std::tanh(x + 1e-5) - std::tanh(x - 1e-5)) / 2e-5;
        err_d = worst(err_d, std::fabs(d[i] - d0[i] * slope));
    }
    check("bias + tanh (pooler)", err, 1e-6);
    check("tanh backward vs differences", err_d, 1e-5);
}

// The heads' losses: cross-entropy over strided rows (a QA column), an
// ignored row, and the squared error, against the definitions in double.
static void check_losses() {
    const int rows = 5, classes = 7, stride = 2 * classes;  // column 1 of [rows * classes, 2]
    auto z = rand_vec(rows * stride, 3.0f);
    std::vector<float> dz(rows * stride, 9.0f), row_loss(rows);
    std::vector<int> labels = {3, -100, 0, 6, 2};
    const float weight = 0.5f / 4;
    launch(cross_entropy, Dim3{1, 1, 1}, 32, ptr(z) + 4, ptr(dz) + 4, (u64)labels.data(), ptr(row_loss), rows, classes,
           stride, 2, weight);
    double err = 0;
    for (int r = 0; r < rows; r++) {
        auto zv = [&](int c) { return (double)z[r * stride + 1 + 2 * c]; };
        double m = -1e300, s = 0;
        for (int c = 0; c < classes; c++) m = std::max(m, zv(c));
        for (int c = 0; c < classes; c++) s += std::exp(zv(c) - m);
        int y = labels[r];
        for (int c = 0; c < classes; c++) {
            double want = y < 0 ? 0.0 : (std::exp(zv(c) - m) / s - (c == y)) * weight;
            err = worst(err, std::fabs(dz[r * stride + 1 + 2 * c] - want));
            err = worst(err, std::fabs(dz[r * stride + 2 * c] - 9.0));  // the other column untouched
        }
        err = worst(err, std::fabs(row_loss[r] - (y < 0 ? 0.0 : m + std::log(s) - zv(y))));
    }
    check("cross-entropy (strided, an ignored row)", err, 1e-6);
    auto x = rand_vec(rows), t = rand_vec(rows);
    std::vector<float> dx(rows), diff(rows);
    launch(squared_error, Dim3{1, 1, 1}, 32, ptr(x), ptr(t), ptr(dx), ptr(diff), rows, 0.2f);
    err = 0;
    for (int i = 0; i < rows; i++)
        err = worst(worst(err, std::fabs(diff[i] - ((double)x[i] - t[i]))), std::fabs(dx[i] - 0.4 * ((double)x[i] - t[i])));
    check("squared error", err, 1e-6);
}

static void check_prefix() {
    const int layers = 3, batch = 2, p = 4, two_h = 6, w = layers * two_h;
    auto past = rand_vec(p * w);
    std::vector<float> kv(layers * batch * p * two_h);
    launch(expand_prefix, Dim3{4, 1, 1}, 32, ptr(past), (u64)0, (u64)0, ptr(kv), layers, batch, p, two_h, KEY,
           THRESHOLD, DSCALE, 1);
    double err = 0;
    for (int k = 0; k < layers; k++)
        for (int b = 0; b < batch; b++)
            for (int i = 0; i < p; i++)
                for (int c = 0; c < two_h; c++) {
                    u64 col = k * two_h + c;
                    double want = past[i * w + col] * drop_factor(KEY, THRESHOLD, DSCALE, ((u64)b * p + i) * w + col);
                    err = worst(err, std::fabs(kv[((k * batch + b) * p + i) * two_h + c] - want));
                }
    check("expand_prefix (PrefixEncoder::expand with dropout)", err, 0.0);
    // Rows of several adapters: row b reads the table at address
    // addresses[row_table[b]], of three apart in memory (past unused).
    auto tables = rand_vec(3 * p * w);
    std::vector<u64> addresses = {ptr(tables) + 8 * p * w, ptr(tables) + 4 * p * w, ptr(tables)};
    std::vector<u32> row_table = {2, 0};
    std::vector<float> rows_kv(kv.size());
    launch(expand_prefix, Dim3{4, 1, 1}, 32, (u64)0, (u64)addresses.data(), (u64)row_table.data(), ptr(rows_kv),
           layers, batch, p, two_h, KEY, THRESHOLD, DSCALE, 0);
    err = 0;
    for (int k = 0; k < layers; k++)
        for (int b = 0; b < batch; b++)
            for (int i = 0; i < p; i++)
                for (int c = 0; c < two_h; c++) {
                    float want = tables[((2 - row_table[b]) * p + i) * w + k * two_h + c];
                    err = worst(err, (double)std::fabs(rows_kv[((k * batch + b) * p + i) * two_h + c] - want));
                }
    check("expand_prefix, a table per row", err, 0.0);
    // reduce is expand's adjoint: <expand(x), r> = <x, reduce(r)>.
    auto r = rand_vec(kv.size());
    std::vector<float> red(p * w);
    launch(reduce_prefix, Dim3{2, 1, 1}, 32, ptr(r), ptr(red), layers, batch, p, two_h, KEY, THRESHOLD, DSCALE, 1, 0);
    // The difference against the size of the terms (red is f32: each term
    // is off by its rounding, which the sum's cancellation does not shrink).
    double a = 0, b2 = 0, terms = 0;
    for (size_t i = 0; i < kv.size(); i++) a += (double)kv[i] * r[i];
    for (size_t i = 0; i < red.size(); i++) {
        b2 += (double)past[i] * red[i];
        terms += std::fabs((double)past[i] * red[i]);
    }
    check("reduce_prefix is expand_prefix's adjoint", std::fabs(a - b2) / std::max(1.0, terms), 1e-6);
    // Accumulating: a second reduce adds the same gradient again.
    auto twice = red;
    launch(reduce_prefix, Dim3{2, 1, 1}, 32, ptr(r), ptr(twice), layers, batch, p, two_h, KEY, THRESHOLD, DSCALE, 1, 1);
    double off = 0;
    for (size_t i = 0; i < red.size(); i++) off += twice[i] != red[i] + red[i];
    check("reduce_prefix accumulating adds", off, 0.0);
}

// The bf16 rounding every producer uses, through dropout_copy's bf16 output.
static void check_bf16() {
    std::vector<float> x = {1.0f, 1.00390625f, 1.01171875f, -2.5f, 3.0e38f, __int_as_float(0x7fc00001)};
    std::vector<float> unused(x.size(), -7.0f);
    std::vector<u16> out(x.size());
    launch(dropout_copy, Dim3{1, 1, 1}, 32, ptr(x), ptr(unused), (u64)x.size(), KEY, THRESHOLD, DSCALE, 0, ptr16(out));
    // 1+2^-8 ties to even (1.0); 1+3·2^-8 rounds up to 1+2^-6.
    std::vector<unsigned short> want = {0x3f80, 0x3f80, 0x3f82, 0xc020, 0x7f62, 0x7fc0};
    double bad = 0;
    for (size_t i = 0; i < x.size(); i++) bad += out[i] != want[i];
    bad += unused != std::vector<float>(x.size(), -7.0f);
    check("bf16 copies (round to nearest even, quiet NaN)", bad, 0.0);
}

// The optimizer kernels: adamw_step against src/training/adamw.rs's
// arithmetic written out in f32 (bit for bit), sum_squares against a double
// sum, scale exact.
static void check_optimizer() {
    const int n = 1000;
    auto p = rand_vec(n), g = rand_vec(n, 0.1f), m = rand_vec(n, 0.01f), v = rand_vec(n, 0.01f);
    for (auto& x : v) x = x * x;
    const float decay = 0.9999f, b1 = 0.9f, b2 = 0.999f, step = 0.0123f, bc2 = 0.0447f, eps = 1e-8f;
    auto want_p = p, want_m = m, want_v = v;
    for (int i = 0; i < n; i++) {
        float pi = want_p[i] * decay;
        want_m[i] = b1 * want_m[i] + (1.0f - b1) * g[i];
        want_v[i] = b2 * want_v[i] + (1.0f - b2) * g[i] * g[i];
        float denom = std::sqrt(want_v[i]) / bc2 + eps;
        want_p[i] = pi - step * want_m[i] / denom;
    }
    launch(adamw_step, Dim3{3, 1, 1}, 128, ptr(p), ptr(g), ptr(m), ptr(v), (u64)n, decay, b1, 1.0f - b1, b2,
           1.0f - b2, step, bc2, eps);
    check("adamw_step = the host's AdamW, bit for bit", (p != want_p) + (m != want_m) + (v != want_v), 0.0);
    std::vector<double> partial(4);
    launch(sum_squares, Dim3{4, 1, 1}, 64, ptr(g), (u64)n, (u64)partial.data());
    double want = 0, got = partial[0] + partial[1] + partial[2] + partial[3];
    for (float x : g) want += (double)x * x;
    auto scaled = g;
    launch(scale, Dim3{2, 1, 1}, 64, ptr(scaled), (u64)n, 0.3f);
    double bad = 0;
    for (int i = 0; i < n; i++) bad += scaled[i] != g[i] * 0.3f;
    check("sum_squares and scale (gradient clipping)", std::fabs(got - want) / want + bad, 1e-12);
}

// The mask function against the CPU engine's: kept count and hash over
// indices 0..2^16, printed by `cargo test --release --lib print_mask_golden
// -- --ignored --nocapture` (src/engine/cpu/dropout.rs).
static void check_dropout_mask() {
    struct Golden {
        float p;
        u64 seed, stream, kept, hash;
    } golden[] = {
        {0.2f, 42ULL, 5ULL, 52510ULL, 6557208980991989283ULL},
        {0.5f, 18446744073709551615ULL, 1099511627776ULL, 32874ULL, 5002642684145535422ULL},
        {0.1f, 7ULL, 0ULL, 59099ULL, 10345157773197550457ULL},
    };
    double bad = 0;
    for (auto& g : golden) {
        u64 key = g.seed ^ (g.stream * 0x9E3779B97F4A7C15ULL);
        u64 threshold = (u64)std::ceil(g.p * 16777216.0f);
        u64 kept = 0, hash = 0;
        for (u64 i = 0; i < (1ULL << 16); i++)
            if (drop_factor(key, threshold, 1.0f / (1.0f - g.p), i) != 0.0f) kept++, hash = hash * 31 + i;
        bad += (kept != g.kept) + (hash != g.hash);
    }
    check("dropout mask = the CPU engine's, bit for bit", bad, 0.0);
}

static void check_embedding_and_glue() {
    const int rows = 4, h = 24, vocab = 10, npos = 8;
    auto word = rand_vec(vocab * h), pos = rand_vec(npos * h), type = rand_vec(2 * h), gamma = rand_vec(h),
         beta = rand_vec(h);
    std::vector<unsigned> ids = {3, 9, 0, 3}, positions = {0, 1, 2, 7}, types = {0, 1, 1, 0};
    std::vector<float> x(rows * h);
    std::vector<u16> x16(rows * h);
    launch(embed_layernorm, Dim3{rows, 1, 1}, 256, (u64)ids.data(), (u64)positions.data(), (u64)types.data(),
           ptr(word), ptr(pos), ptr(type), ptr(gamma), ptr(beta), 1e-12f, ptr(x), h, KEY, THRESHOLD,
           DSCALE, 1, ptr16(x16), (u64)rows, (u64)0, 0, (u64)0, (u64)0, (u64)0);
    check("embeddings in bf16 too", bf16_mismatches(x, x16), 0.0);
    // The rows' LayerNorm inputs; with `prompt`, the first `p` rows of each
    // sequence of `seq` take the prompt's rows [rows / seq, p, h].
    auto sums = [&](const float* prompt, int p, int seq) {
        std::vector<double> e(rows * h);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < h; j++) {
                double w = prompt != nullptr && r % seq < p ? prompt[((r / seq) * p + r % seq) * h + j]
                                                            : word[ids[r] * h + j];
                e[r * h + j] = w + pos[positions[r] * h + j] + type[types[r] * h + j];
            }
        return e;
    };
    auto normed = [&](const std::vector<double>& e, std::vector<double>* stats) {
        std::vector<double> want(rows * h);
        for (int r = 0; r < rows; r++) {
            double mean = 0, var = 0;
            for (int j = 0; j < h; j++) mean += e[r * h + j] / h;
            for (int j = 0; j < h; j++) var += (e[r * h + j] - mean) * (e[r * h + j] - mean) / h;
            if (stats != nullptr) (*stats)[2 * r] = mean, (*stats)[2 * r + 1] = 1.0 / std::sqrt(var + 1e-12);
            for (int j = 0; j < h; j++)
                want[r * h + j] = ((e[r * h + j] - mean) / std::sqrt(var + 1e-12) * gamma[j] + beta[j]) *
                                  drop_factor(KEY, THRESHOLD, DSCALE, (u64)r * h + j);
        }
        return want;
    };
    check("embeddings + LayerNorm + dropout", rel(dbl(x), normed(sums(nullptr, 0, 1), nullptr)), 1e-5);

    // Prompt tuning: sequences of 2 rows, the first of each the prompt's,
    // with the LayerNorm's input and stats kept for the backward.
    auto prompt = rand_vec(2 * h);
    std::vector<float> sum(rows * h), stats(rows * 2);
    launch(embed_layernorm, Dim3{rows, 1, 1}, 256, (u64)ids.data(), (u64)positions.data(), (u64)types.data(),
           ptr(word), ptr(pos), ptr(type), ptr(gamma), ptr(beta), 1e-12f, ptr(x), h, KEY, THRESHOLD,
           DSCALE, 1, (u64)0, (u64)rows, ptr(prompt), 1, (u64)2, ptr(sum), ptr(stats));
    auto e = sums(prompt.data(), 1, 2);
    std::vector<double> want_stats(rows * 2);
    auto want = normed(e, &want_stats);
    check("embeddings with prompt rows, sums and stats kept",
          rel(dbl(x), want) + rel(dbl(sum), e) + rel(dbl(stats), want_stats), 1e-5);

    auto a = rand_vec(1000), b = a, c(a);
    std::vector<float> d(a.size());
    launch(dropout_apply, Dim3{2, 1, 1}, 128, ptr(b), (u64)b.size(), KEY, THRESHOLD, DSCALE);
    launch(dropout_copy, Dim3{3, 1, 1}, 64, ptr(c), ptr(d), (u64)c.size(), KEY, THRESHOLD, DSCALE, 1, (u64)0);
    double err = 0;
    for (size_t i = 0; i < a.size(); i++)
        err = worst(err, (double)std::fabs(b[i] - a[i] * drop_factor(KEY, THRESHOLD, DSCALE, i)) + std::fabs(d[i] - b[i]));
    check("dropout_apply and dropout_copy", err, 0.0);

    const int nb = 3, t = 4, w = 5;
    auto full = rand_vec(nb * t * w), bias = rand_vec(w);
    std::vector<float> cls(nb * w), back(nb * t * w, 0.0f), rows_out(nb * w);
    launch(gather_rows, Dim3{1, 1, 1}, 32, ptr(full), ptr(cls), nb, w, (u64)(t * w));
    launch(scatter_rows, Dim3{1, 1, 1}, 32, ptr(cls), ptr(back), nb, w, (u64)(t * w));
    launch(broadcast_rows, Dim3{1, 1, 1}, 32, ptr(bias), ptr(rows_out), nb, w);
    err = 0;
    for (int r = 0; r < nb; r++)
        for (int c2 = 0; c2 < w; c2++) {
            err += std::fabs(cls[r * w + c2] - full[r * t * w + c2]) + std::fabs(rows_out[r * w + c2] - bias[c2]);
            for (int i = 0; i < t; i++)
                err += std::fabs(back[(r * t + i) * w + c2] - (i == 0 ? full[r * t * w + c2] : 0.0f));
        }
    check("gather, scatter and broadcast of rows", err, 0.0);
}

int main() {
    check_dropout_mask();
    check_embedding_and_glue();
    check_attention(false);
    check_attention(true);
    check_attention_no_prefix();
    check_qkv_bias();
    check_attention_mma();
    check_layernorm(5, 40);
    check_layernorm(4, 38);  // not a multiple of 4: an element an access
    check_layernorm(3, 1100);
    check_gelu_bf16();
    check_gelu(50);
    check_gelu(52);
    check_gelu(56);
    check_tanh();
    check_losses();
    check_prefix();
    check_optimizer();
    check_bf16();
    std::printf("digest %016llx\n", (unsigned long long)digest);
    std::printf("%d failed\n", failures);
    return failures != 0;
}
