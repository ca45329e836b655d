// ---------------------------------------------------------------------------
// Attention on the tensor cores (mma.sync, f32 accumulation), forward and
// backward, in three input formats: bf16 (m16n8k16) for --precision bf16,
// tf32 (m16n8k8) for --precision tf32, and tf32x3 (three m16n8k8 of split
// operands, f32 accuracy) for fp32 by 3xTF32. The functions of the f32
// kernels above, with q, k, v, dO, the probabilities and dS rounded to the
// format where they enter a product (in tf32x3: split into two tf32 parts),
// as the GEMMs of that precision treat their inputs: q, k, v and dO by
// attention_operands and attention_delta, which write them in the format,
// so that the tiles are copies (cp.async). The three kernels of a format
// round alike and take e^x alike (exp2_approx), so the backward recomputes
// the forward's probabilities. The loader uses them when the head size
// allows (bf16: a multiple of 16, tf32 and tf32x3: of 8; other sizes do not
// build them), the format's self-test passed on the device and their shared
// memory fits in a block.
//
// A block of 4 warps takes 64 queries (dK/dV: 64 keys), 16 per warp; the
// other side streams through shared memory 64 at a time (in the forward,
// the next tile's copies overlap this one's products: forward_key_tiles).
// Fragments (PTX ISA,
// mma.sync.aligned; g = lane / 4, t = lane % 4):
//   C (16 x 8, f32, every format): c0, c1 = (row g, cols 2t, 2t + 1);
//     c2, c3 = the same columns of row g + 8.
//   bf16, m16n8k16, two k in a register (the lower k in the lower half):
//     A (16 x 16): a0 = (row g, k 2t..2t+1), a1 = (g + 8, 2t..),
//       a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..);
//     B (16 x 8): b0 = (k 2t..2t+1, col g), b1 = (k 2t + 8.., col g).
//   tf32 and tf32x3, m16n8k8, one k in a register:
//     A (16 x 8): a0 = (row g, k t), a1 = (g + 8, t), a2 = (g, t + 4),
//       a3 = (g + 8, t + 4);
//     B (8 x 8): b0 = (k t, col g), b1 = (k t + 4, col g).
// Each format loads these from the row-major tiles in shared memory
// (a_rows, b_rows, b_cols; bf16 by ldmatrix), and one pair of loops serves
// all (mma_rows_by_rows, mma_tiles_by_cols).
// Scores turn into probabilities (and dS) in registers and feed the next
// product as its A operand (mma_tiles_by_cols). In bf16 two neighbouring C
// tiles are exactly an A fragment. In tf32 a C tile holds columns 2t and
// 2t + 1 where A wants t and t + 4; the product sums over those columns, so
// A's column t is taken to be the tile's column 2t and t + 4 to be 2t + 1,
// and B's rows are read in that same order.

#define MMA_ROWS 64          // queries (keys) per block and per streamed tile
#define KT (MMA_ROWS / 8)    // C tiles across 64 columns
#define DT (HEAD_DIM / 8)    // C tiles across the head
#define MMA_THREADS 128      // 4 warps per block (the launch's)

#if HEAD_DIM % 8 == 0
#ifndef MMA_EMULATED
// d = a · b + c for one warp with the mma.sync `instr`. It needs sm_80; the
// loader enables these kernels from compute capability 8.0 only, and before
// it they give NaN, which the self-test rejects.
#if __CUDA_ARCH__ >= 800
#define MMA_SYNC(instr, d, a, b, c)                                                                              \
    asm volatile(instr " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"                         \
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                              \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),     \
                   "f"(c[2]), "f"(c[3]))
#else
#define MMA_SYNC(instr, d, a, b, c) \
    for (int e = 0; e < 4; e++) d[e] = __int_as_float(0x7fc00000)
#endif
__device__ __forceinline__ void mma_bf16_16816(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    MMA_SYNC("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", d, a, b, c);
}
__device__ __forceinline__ void mma_tf32_1688(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    MMA_SYNC("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", d, a, b, c);
}
#endif

// 16 bytes from global `src` to shared `dst` (both 16-byte aligned), zeros
// when not `valid`: by cp.async on sm_80 and later (no registers, no wait
// until copy_wait), else a load and a store. The emulator lands it only at
// the wait (tools/cuda_emu/emu.h).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
#if defined(MMA_EMULATED)
    cp_async_emulated(dst, src, valid);
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"((u32)__cvta_generic_to_shared(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
#else
    float4 v = {0.0f, 0.0f, 0.0f, 0.0f};
    if (valid) v = *reinterpret_cast<const float4*>(src);
    *reinterpret_cast<float4*>(dst) = v;
#endif
}

// Closes this thread's group of copy16 calls (cp.async.commit_group).
__device__ __forceinline__ void copy_commit() {
#if defined(MMA_EMULATED)
    cp_async_commit_emulated();
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// This thread's copy16 calls have landed but those of its newest NEWER
// committed groups (cp.async.wait_group); a __syncthreads after it makes
// every thread's visible.
template <int NEWER>
__device__ __forceinline__ void copy_wait_groups() {
#if defined(MMA_EMULATED)
    cp_async_wait_emulated(NEWER);
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(NEWER));
#endif
}

// All of this thread's copy16 calls have landed.
__device__ __forceinline__ void copy_wait() {
    copy_commit();
    copy_wait_groups<0>();
}

// Four 8 x 8 matrices of 16-bit values from shared memory into a warp's
// registers (ldmatrix.x4, sm_75 and later): lane l gives the address of row
// l % 8 of matrix l / 8 (8 values, 16-byte aligned). Register j receives
// from matrix j its row l / 4, values 2(l % 4) and 2(l % 4) + 1, the lower
// in the lower half; with TRANS, its column l / 4 at rows 2(l % 4) and
// 2(l % 4) + 1. These are the mma fragments' layouts: one instruction a
// fragment pair where 32-bit loads took four and 16-bit loads eight, with
// four packs.
#ifndef MMA_EMULATED
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const u16* row) {
#if __CUDA_ARCH__ >= 800
    u32 at = (u32)__cvta_generic_to_shared(row);
    if (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(at));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(at));
    }
#else
    for (int j = 0; j < 4; j++) r[j] = 0x7fc07fc0u;  // NaN, as MMA_SYNC before sm_80
#endif
}
#endif

// v rounded to tf32 as tf32_round, in one cvt.rna on sm_80 and later (the
// mask makes the low bits zero, which the split's v - hi needs); a NaN
// stays NaN, though not always with its payload.
__device__ __forceinline__ float tf32_rna(float v) {
#if !defined(MMA_EMULATED) && __CUDA_ARCH__ >= 800
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return __uint_as_float(r & 0xffffe000u);
#else
    return tf32_round(v);
#endif
}

// The f32 in register w as 3xTF32's two tf32 parts, w = hi + lo (as
// split_tf32 in kernels/tf32x3.cuh, without its care for infinities: a
// non-finite input makes the product NaN, as softmax would make it).
__device__ __forceinline__ void split_reg(u32 w, u32& hi, u32& lo) {
    float x = __uint_as_float(w), h = tf32_rna(x);
    hi = __float_as_uint(h);
    lo = __float_as_uint(tf32_rna(x - h));
}

// The registers of an mma operand (A: N = 4, B: N = 2) as the format's mma
// takes them: hi, the format's values; lo, in tf32x3 only, the rest of each
// f32 (0 in the other formats). An operand used by several mma is split
// once, where it is loaded.
template <int N>
struct Operand {
    u32 hi[N], lo[N];
};

template <typename F, int N>
__device__ __forceinline__ Operand<N> operand(const u32 (&r)[N]) {
    Operand<N> o;
#pragma unroll
    for (int i = 0; i < N; i++) F::split(r[i], o.hi[i], o.lo[i]);
    return o;
}

// bf16: two k in a register. Fragments come from the row-major [64,
// STRIDE] tiles by ldmatrix_x4, two n tiles (B) a load. With a stride of HD
// + 8 (a row 16 bytes past a multiple of 128), the 8 rows each quarter of
// the warp reads sit on distinct banks.
struct Bf16Format {
    typedef u16 T;
    static constexpr int K = 16, STRIDE = HEAD_DIM + 8;  // STRIDE: of [64, HD] tiles
    static constexpr int B_TILES = 2;                    // n tiles of B per load
    // Row 0 of a (batch row, head)'s operands or dO, as attention_operands
    // and attention_delta write them in bf16.
    __device__ static const T* rows(const HeadRows& o) { return o.f16 + o.base; }
    __device__ static float value(T v) { return bf16_float(v); }
    __device__ static T of(float v) { return bf16_bits(v); }
    __device__ static u32 pack(float lo, float hi) { return bf16x2_bits(lo, hi); }
    __device__ static void split(u32 r, u32& hi, u32& lo) { hi = r, lo = 0; }
    __device__ static void mma(float d[4], const Operand<4>& a, const Operand<2>& b, const float c[4]) {
        mma_bf16_16816(d, a.hi, b.hi, c);
    }
    // A: rows 0..15 of `a`, its columns 0..15 (matrices: rows 0-7 and 8-15
    // of columns 0-7, then of 8-15).
    __device__ static void a_rows(const T* a, int g, int tq, u32 x[4]) {
        int lane = g * 4 + tq;
        ldmatrix_x4<false>(x, a + (lane % 16) * STRIDE + lane / 16 * 8);
    }
    // B of n tiles 0 and 1 from rows 0..15 of `b` (the n), its columns 0..15
    // (the k): matrices rows 0-7 of columns 0-7 and 8-15, then rows 8-15.
    __device__ static void b_rows(const T* b, int g, int tq, u32 y[B_TILES][2]) {
        int lane = g * 4 + tq;
        ldmatrix_x4<false>(&y[0][0], b + (lane % 8 + lane / 16 * 8) * STRIDE + lane / 8 % 2 * 8);
    }
    // A from C tiles nt and nt + 1 (16 rows, 16 columns).
    __device__ static void a_from_tiles(const float w[KT][4], int nt, u32 x[4]) {
        x[0] = pack(w[nt][0], w[nt][1]);
        x[1] = pack(w[nt][2], w[nt][3]);
        x[2] = pack(w[nt + 1][0], w[nt + 1][1]);
        x[3] = pack(w[nt + 1][2], w[nt + 1][3]);
    }
    // B of n tiles 0 and 1 from columns 0..15 of M (the n) at its rows
    // 0..15 (the k), transposed: matrices rows 0-7 and 8-15 of columns 0-7,
    // then of 8-15.
    __device__ static void b_cols(const T* m, int g, int tq, u32 y[B_TILES][2]) {
        int lane = g * 4 + tq;
        ldmatrix_x4<true>(&y[0][0], m + (lane % 16) * STRIDE + lane / 16 * 8);
    }
};

// tf32: one k in a register. SPLIT false (tf32): the f32 rounded to tf32
// (tf32_round: the operands by attention_operands and attention_delta, the
// probabilities and dS as they become A fragments), one mma per product. SPLIT true
// (tf32x3, fp32 by 3xTF32): tiles and fragments keep the f32, and each mma
// splits both operands, x = hi + lo, into lo·hi' + hi·lo' + hi·hi' (three
// mma, the small terms first): f32 accuracy, as fp32's GEMMs
// (engine/cuda/tf32x3.rs). Shared memory is the same in both.
// B of a product with C tiles is read from the row-major tile itself: rows
// 2t and 2t + 1 of a tile with a stride of 4 (mod 32) floats sit on
// distinct banks.
template <bool SPLIT>
struct Tf32Formats {
    typedef float T;
    static constexpr int K = 8, STRIDE = HEAD_DIM + 4;
    static constexpr int B_TILES = 1;
    __device__ static T round(float v) { return SPLIT ? v : tf32_round(v); }
    // Row 0 of a (batch row, head)'s operands or dO, as attention_operands
    // and attention_delta write them in f32 (rounded to tf32 unless SPLIT).
    __device__ static const T* rows(const HeadRows& o) { return o.f + o.base; }
    __device__ static u32 reg(const T* p) { return __float_as_uint(*p); }
    __device__ static float value(T v) { return v; }
    __device__ static T of(float v) { return round(v); }
    __device__ static u32 pack(float lo, float) { return __float_as_uint(round(lo)); }
    __device__ static void split(u32 r, u32& hi, u32& lo) {
        if (SPLIT) {
            split_reg(r, hi, lo);
        } else {
            hi = r, lo = 0;
        }
    }
    __device__ static void mma(float d[4], const Operand<4>& a, const Operand<2>& b, const float c[4]) {
        if (!SPLIT) {
            mma_tf32_1688(d, a.hi, b.hi, c);
            return;
        }
        float acc[4];
        mma_tf32_1688(acc, a.lo, b.hi, c);
        mma_tf32_1688(acc, a.hi, b.lo, acc);
        mma_tf32_1688(d, a.hi, b.hi, acc);
    }
    // A from C tile nt: A's column t is the tile's column 2t, t + 4 is 2t + 1.
    __device__ static void a_from_tiles(const float w[KT][4], int nt, u32 x[4]) {
        x[0] = pack(w[nt][0], 0.0f);
        x[1] = pack(w[nt][2], 0.0f);
        x[2] = pack(w[nt][1], 0.0f);
        x[3] = pack(w[nt][3], 0.0f);
    }
    // A: rows 0..15 of `a`, its columns 0..7.
    __device__ static void a_rows(const T* a, int g, int tq, u32 x[4]) {
        const T* ar = a + g * STRIDE + tq;
        x[0] = reg(ar), x[1] = reg(ar + 8 * STRIDE), x[2] = reg(ar + K / 2), x[3] = reg(ar + 8 * STRIDE + K / 2);
    }
    // B of n tile 0 from rows 0..7 of `b` (the n), its columns 0..7 (the k).
    __device__ static void b_rows(const T* b, int g, int tq, u32 y[B_TILES][2]) {
        const T* br = b + g * STRIDE + tq;
        y[0][0] = reg(br), y[0][1] = reg(br + K / 2);
    }
    // B of n tile 0 from column g of M at its rows 2t and 2t + 1 (the k, in
    // A's column order).
    __device__ static void b_cols(const T* m, int g, int tq, u32 y[B_TILES][2]) {
        const T* p = m + 2 * tq * STRIDE + g;
        y[0][0] = reg(p), y[0][1] = reg(p + STRIDE);
    }
};
typedef Tf32Formats<false> Tf32Format;
typedef Tf32Formats<true> Tf32x3Format;

// c[nt] += A (16 rows of `a`) · B[nt]ᵀ over the head, for the KT tiles of 8
// rows of `b` (both [*, STRIDE] tiles of format F): scores (or dP) of 16
// rows against 64 columns. Every tile is multiplied, those past the last
// key (or query) too: their rows are zeros (copy_tile_rows), and the
// callers mask their columns. Skipping them took a branch around each
// product, and the branches and warp syncs cost more instructions than
// the products they saved (at T 128 and a prefix of 20, 5 of the 24 tiles
// a query row meets are past the last key).
template <typename F>
__device__ __forceinline__ void mma_rows_by_rows(const typename F::T* a, const typename F::T* b, float c[KT][4], int g,
                                                 int tq) {
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM; kk += F::K) {
        u32 x[4];
        F::a_rows(a + kk, g, tq, x);
        const Operand<4> xa = operand<F>(x);
#pragma unroll
        for (int nt = 0; nt < KT; nt += F::B_TILES) {
            u32 y[F::B_TILES][2];
            F::b_rows(b + nt * 8 * F::STRIDE + kk, g, tq, y);
#pragma unroll
            for (int i = 0; i < F::B_TILES; i++) F::mma(c[nt + i], xa, operand<F>(y[i]), c[nt + i]);
        }
    }
}

// o[dn] += W (16 x 64, the C tiles w) · M (64 x HD, a row-major tile):
// probabilities times values, dS times keys or queries. Past the last key
// (or query) M's rows and W's columns are zeros: they add exact zeros.
template <typename F>
__device__ __forceinline__ void mma_tiles_by_cols(const float w[KT][4], const typename F::T* m, float o[DT][4], int g,
                                                  int tq) {
#pragma unroll
    for (int nt = 0; nt < KT; nt += F::K / 8) {
        u32 x[4];
        F::a_from_tiles(w, nt, x);
        const Operand<4> xa = operand<F>(x);
#pragma unroll
        for (int dn = 0; dn < DT; dn += F::B_TILES) {
            u32 y[F::B_TILES][2];
            F::b_cols(m + nt * 8 * F::STRIDE + dn * 8, g, tq, y);
#pragma unroll
            for (int i = 0; i < F::B_TILES; i++) F::mma(o[dn + i], xa, operand<F>(y[i]), o[dn + i]);
        }
    }
}

// Shared memory from its start as [64, STRIDE] tiles of format F, one per
// entry of `tiles`; returns where the rest starts.
template <typename F, int N>
__device__ __forceinline__ typename F::T* carve_tiles(float* smem, typename F::T* (&tiles)[N]) {
    typename F::T* at = reinterpret_cast<typename F::T*>(smem);
    for (int i = 0; i < N; i++) {
        tiles[i] = at;
        at += MMA_ROWS * F::STRIDE;
    }
    return at;
}

// Rows r0 .. r0 + 64 into `tile` [64, STRIDE], row r of them read from
// row(r) (16-byte aligned, HD values of format F), zeros from row `count`
// on, 16 bytes a copy16; copy_wait, then a __syncthreads, before they are
// read. Every thread calls it.
template <typename F, typename Row>
__device__ __forceinline__ void copy_tile_rows(typename F::T* tile, int r0, int count, Row row) {
    constexpr int PER_COPY = 16 / sizeof(typename F::T), PER_ROW = HEAD_DIM / PER_COPY;
#pragma unroll 1
    for (int e = threadIdx.x; e < MMA_ROWS * PER_ROW; e += MMA_THREADS) {
        int r = e / PER_ROW, d = e % PER_ROW * PER_COPY;
        bool valid = r0 + r < count;
        copy16(tile + r * F::STRIDE + d, row(valid ? r0 + r : 0) + d, valid);
    }
}

// The same from `rows`: contiguous [*, HD] rows, as attention_operands
// wrote them.
template <typename F>
__device__ __forceinline__ void copy_mma_tile(typename F::T* tile, const typename F::T* rows, int r0, int count) {
    copy_tile_rows<F>(tile, r0, count, [rows](int r) { return rows + (u64)r * HEAD_DIM; });
}

// f(nt, e, col, r) for every element e of the KT C tiles nt of a thread:
// column col = nt*8 + 2tq + (e & 1) of the 64, row g + 8r with r = e >> 1.
template <typename Fn>
__device__ __forceinline__ void each_element(int tq, Fn f) {
#pragma unroll
    for (int nt = 0; nt < KT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) f(nt, e, nt * 8 + 2 * tq + (e & 1), e >> 1);
}

// Where a block of a tensor-core kernel works: batch row b, head hh; this
// thread's warp and fragment coordinates g = lane / 4, tq = lane % 4; H,
// the number of keys n = P + T, and whether any key is visible.
struct MmaBlock {
    int b, hh, warp, g, tq, h, n, any;
    __device__ MmaBlock(const float* mask, int t, int p, int nh)
        : b(blockIdx.z), hh(blockIdx.y), warp(threadIdx.x >> 5), g((threadIdx.x & 31) >> 2), tq(threadIdx.x & 3),
          h(nh * HEAD_DIM), n(p + t), any(any_visible(mask, blockIdx.z, t, p)) {}
};

// kb[c] = 0 where key j0 + c takes part, -inf where it does not (masked,
// or past the last key), for c < 64, from the key's flag: added to the
// scores of a key tile, so that the mask is read once per tile, not once
// per score.
__device__ __forceinline__ void store_key_bias(float* kb, float flag) {
    if (threadIdx.x < MMA_ROWS) kb[threadIdx.x] = flag != 0.0f ? 0.0f : NEG_INF;
}

// The flag of this thread's key in the tile from j0 (threads 0 .. 63; the
// others hold 0).
__device__ __forceinline__ float tile_key_flag(const float* mask, const MmaBlock& blk, int j0, int t, int p) {
    return threadIdx.x < MMA_ROWS ? key_flag(mask, blk.b, j0 + threadIdx.x, t, p, blk.any) : 0.0f;
}

// Elements 2tq and 2tq + 1 of the 8 columns of C tile nt in a [64] row of
// f32 in shared memory (a key bias, or per-query statistics).
__device__ __forceinline__ float2 column_pair(const float* v, int nt, int tq) {
    return *reinterpret_cast<const float2*>(v + nt * 8 + 2 * tq);
}

// The dropout keep bits of this thread's 32 elements of a 16 x 64 tile
// (probabilities, or their transpose in dK/dV): bit nt*4 + e for element e
// of C tile nt, whose z is z[e >> 1] (its rows' column 2tq) + (nt*8 +
// (e & 1)) * step (the columns' z step). All ones without dropout. Taken
// before the tile's products, so that the hash's 64-bit arithmetic does not
// meet their registers.
__device__ __forceinline__ u32 keep_bits(int dropout, const u64 z[2], u64 step, u64 threshold) {
    if (!dropout) return ~0u;
    u32 bits = 0;
#pragma unroll
    for (int nt = 0; nt < KT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            bits |= (u32)drop_kept(z[e >> 1] + (u64)(nt * 8 + (e & 1)) * step, threshold) << (nt * 4 + e);
    return bits;
}

// The dropout factor of element k of keep_bits: `scale` (1 without dropout)
// where kept, 0 where dropped.
__device__ __forceinline__ float keep_factor(u32 bits, int k, float scale) {
    return (bits >> k) & 1u ? scale : 0.0f;
}

// Checks format F's fragment layouts and tile loads on this device, as the
// kernels use them: one warp computes S = A·Bᵀ (mma_rows_by_rows) and O =
// W·B (mma_tiles_by_cols) of small integers, exact in bf16, tf32 and the
// sums: A[r][k] = (r + 2k) % 7 - 3 and B[j][k] = (3k + j) % 5 - 2, 16 rows
// of HD (B's tile zero from row 16 on, as a tile past the last key), and
// W[r][j] = (r + 3j) % 5 - 2, 16 x 16. It writes S [16, 16], then O [16,
// HD], row-major to `out`; the loader compares them with the products it
// computes itself.
template <typename F>
__device__ __forceinline__ void mma_self_test(float* out) {
    typedef typename F::T T;
    ATTENTION_SHARED;  // a [16, STRIDE], b [64, STRIDE]
    T* a = reinterpret_cast<T*>(smem);
    T* b = a + 16 * F::STRIDE;
    int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    for (int e = lane; e < MMA_ROWS * HEAD_DIM; e += 32) {
        int r = e / HEAD_DIM, k = e % HEAD_DIM;
        if (r < 16) a[r * F::STRIDE + k] = F::of((float)((r + 2 * k) % 7 - 3));
        b[r * F::STRIDE + k] = F::of(r < 16 ? (float)((3 * k + r) % 5 - 2) : 0.0f);
    }
    __syncthreads();
    float s[KT][4] = {}, w[KT][4] = {}, o[DT][4] = {};
    mma_rows_by_rows<F>(a, b, s, g, tq);
    each_element(tq, [&](int nt, int e, int col, int r) {
        if (col < 16) w[nt][e] = (float)((g + 8 * r + 3 * col) % 5 - 2);
    });
    mma_tiles_by_cols<F>(w, b, o, g, tq);
    each_element(tq, [&](int nt, int e, int col, int r) {
        if (col < 16) out[(g + 8 * r) * 16 + col] = s[nt][e];
    });
#pragma unroll
    for (int dn = 0; dn < DT; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) out[16 * 16 + (g + 8 * (e >> 1)) * HEAD_DIM + dn * 8 + 2 * tq + (e & 1)] = o[dn][e];
}

// A gradient into d(qkv) [rows, 3H] at `at`: f32, or bf16 when dqkv16 is set.
__device__ __forceinline__ void store_grad1(float* dqkv, u16* dqkv16, u64 at, float v) {
    if (dqkv16 != 0) {
        dqkv16[at] = bf16_bits(v);
    } else {
        dqkv[at] = v;
    }
}

// Where the forward reads its operands: the rows attention_operands wrote
// (q with its bias and times the scale; k and v with their biases, the
// prefix's first), copied as they are.
template <typename F>
struct OpsSource {
    static constexpr bool SHIFTED = false;
    const typename F::T* rows;
    int t, n;
    // Query rows i0 .. i0 + 63, zeros from row `count` on.
    __device__ void load_q(typename F::T* qs, int i0, int count) const { copy_mma_tile<F>(qs, rows, i0, count); }
    // Key (value) rows j0 .. j0 + 63, zeros past the last.
    __device__ void load_k(typename F::T* ks, int j0) const { copy_mma_tile<F>(ks, rows + (u64)t * HEAD_DIM, j0, n); }
    __device__ void load_v(typename F::T* vs, int j0) const {
        copy_mma_tile<F>(vs, rows + (u64)(t + n) * HEAD_DIM, j0, n);
    }
    __device__ const float* v_bias() const { return 0; }
};

// The forward's running state of rows g and g + 8 of a warp's 16 queries:
// max and sum (and with dropout and SHIFTED, the sum of the kept
// probabilities), and their share of the output.
struct ForwardRows {
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f}, lk[2] = {0.0f, 0.0f};
    float o[DT][4] = {};
};

// One key tile's scores of a warp's 16 queries (qw) against the keys ks
// with their key bias kb, into s (zeros on entry): masked, then the online
// softmax's probabilities of rows g (e = 0, 1) and g + 8 (e = 2, 3), times
// the dropout factors, with st's max and sums brought up to this tile and
// its output rescaled to the new max, ready for s·V. z: the dropout z of
// the rows' column 2tq of key 0. Dropout's arithmetic is in branches of its
// own (the flag is the block's), so that inference's loop does none of it:
// two copies of the loop, one for each, took more than twice the registers.
template <typename F, typename Src>
__device__ __forceinline__ void tile_scores(const typename F::T* qw, const typename F::T* ks, const float* kb,
                                            const MmaBlock& blk, ForwardRows& st, float s[KT][4], int j0,
                                            int dropout, const u64 z[2], u64 threshold, float dscale) {
    const u64 zt[2] = {z[0] + (u64)j0 * DROP_STEP, z[1] + (u64)j0 * DROP_STEP};
    u32 keep = keep_bits(dropout, zt, DROP_STEP, threshold);
    mma_rows_by_rows<F>(qw, ks, s, blk.g, blk.tq);
    float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int nt = 0; nt < KT; nt++) {
        float2 bias = column_pair(kb, nt, blk.tq);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[nt][e] += e & 1 ? bias.y : bias.x;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
        }
    }
    float base[2], corr[2], sum[2] = {0.0f, 0.0f}, kept[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; r++) {
        for (int o2 = 1; o2 < 4; o2 <<= 1) mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], o2));
        float m_new = fmaxf(st.m[r], mx[r]);
        base[r] = (m_new == NEG_INF ? 0.0f : m_new) * LOG2E;  // in log2 units
        corr[r] = exp2_approx(fmaf(st.m[r], LOG2E, -base[r]));
        st.m[r] = m_new;
    }
    // The softmax denominator sums the probabilities before dropout.
    each_element(blk.tq, [&](int nt, int e, int, int r) {
        s[nt][e] = exp2_approx(fmaf(s[nt][e], LOG2E, -base[r]));
        sum[r] += s[nt][e];
    });
    if (dropout) {
        each_element(blk.tq, [&](int nt, int e, int, int r) {
            s[nt][e] *= keep_factor(keep, nt * 4 + e, dscale);
            if (Src::SHIFTED) kept[r] += s[nt][e];
        });
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        for (int o2 = 1; o2 < 4; o2 <<= 1) sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], o2);
        st.l[r] = st.l[r] * corr[r] + sum[r];
        if (Src::SHIFTED && dropout) {
            for (int o2 = 1; o2 < 4; o2 <<= 1) kept[r] += __shfl_xor_sync(0xffffffffu, kept[r], o2);
            st.lk[r] = st.lk[r] * corr[r] + kept[r];
        }
    }
#pragma unroll
    for (int dn = 0; dn < DT; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) st.o[dn][e] *= corr[e >> 1];
}

// The forward's loop over the key tiles, in one buffer each of K and V:
// the copy of the next tile's keys overlaps this tile's s·V, that of its
// values the next tile's scores (cp.async groups, oldest first: before a
// tile's scores its keys and q have landed, its values may be in flight;
// before its s·V its values have, the next keys may be). So a block waits
// on global memory for the first keys alone, where it waited for the keys
// and values of every tile. q goes out after the first keys and lands with
// them (a copy in their group; from qkv16, loads that wait while the keys
// fly). The mask of the next tile's keys is read during this one.
template <typename F, typename Src>
__device__ __forceinline__ void forward_key_tiles(const Src& src, const MmaBlock& blk, ForwardRows& st,
                                                  typename F::T* const tiles[3], float* kb, const float* mask, int i0,
                                                  int t, int p, int dropout, const u64 z[2], u64 threshold,
                                                  float dscale) {
    const typename F::T* qw = tiles[0] + blk.warp * 16 * F::STRIDE;
    const bool active = i0 + blk.warp * 16 < t;  // else the warp only copies
    src.load_k(tiles[1], 0);
    // A row with no visible key is uniform (P = 0 and only padding): zero
    // queries give it scores of 0.
    src.load_q(tiles[0], i0, blk.any ? t : 0);
    copy_commit();
    src.load_v(tiles[2], 0);
    copy_commit();
    float flag = tile_key_flag(mask, blk, 0, t, p);
    for (int j0 = 0; j0 < blk.n; j0 += MMA_ROWS) {
        const bool next = j0 + MMA_ROWS < blk.n;
        store_key_bias(kb, flag);  // its readers of the last tile are past the barrier after their scores
        if (next) flag = tile_key_flag(mask, blk, j0 + MMA_ROWS, t, p);
        copy_wait_groups<1>();  // the keys
        __syncthreads();
        float s[KT][4] = {};
        if (active) tile_scores<F, Src>(qw, tiles[1], kb, blk, st, s, j0, dropout, z, threshold, dscale);
        __syncthreads();  // every warp is done with the keys and the key bias
        if (next) src.load_k(tiles[1], j0 + MMA_ROWS);
        copy_commit();
        copy_wait_groups<1>();  // the values
        __syncthreads();
        if (active) mma_tiles_by_cols<F>(s, tiles[2], st.o, blk.g, blk.tq);
        __syncthreads();  // every warp is done with the values
        if (next) src.load_v(tiles[2], j0 + MMA_ROWS);
        copy_commit();
    }
}

// Arguments and outputs as attention_forward's; `src` gives the tiles.
//
// With Src::SHIFTED the token keys and values come without their biases
// b_k and b_v, and the prefix's with minus them (attention_operands'
// minus_bias). Every score of a row is then its true value less q·b_k: the
// same for all its keys, which the softmax does not see. And the output
// Σ_j p_j v_j (true values) is the products' sum plus b_v Σ_j p_j: b_v
// where nothing is dropped, b_v times the kept probabilities' sum where it
// is. So no bias term costs an instruction per score. lse, which would be
// of the shifted scores, is not written (none is asked for: no backward
// reads such a layer).
template <typename F, typename Src>
__device__ __forceinline__ void attention_forward_tc(const Src& src, const float* mask, float* ctx, float* lse, int t,
                                                     int p, int nh, u64 key, u64 threshold, float dscale, int dropout,
                                                     u16* ctx16) {
#ifdef KERNEL_STATS_WITHOUT_DROPOUT
    dropout = 0;  // tools/kernel_stats.py --without-dropout: inference's loop alone
#endif
    ATTENTION_SHARED;  // q, k, v [64, STRIDE]; f32 [64] key bias
    typename F::T* tiles[3];
    float* kb = reinterpret_cast<float*>(carve_tiles<F>(smem, tiles));
    const MmaBlock blk(mask, t, p, nh);
    int i0 = blockIdx.x * MMA_ROWS;
    int qrows[2] = {i0 + blk.warp * 16 + blk.g, i0 + blk.warp * 16 + blk.g + 8};
    u64 z[2];
#pragma unroll
    for (int r = 0; r < 2; r++)
        z[r] = drop_z(key, (((u64)blk.b * nh + blk.hh) * t + min(qrows[r], t - 1)) * blk.n + 2 * blk.tq);
    ForwardRows st;
    forward_key_tiles<F>(src, blk, st, tiles, kb, mask, i0, t, p, dropout, z, threshold, dscale);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int i = qrows[r];
        if (i >= t) continue;
        float inv = 1.0f / st.l[r];
        // b_v's weight: the probabilities' sum, 1 where nothing is dropped.
        float bv_weight = dropout ? st.lk[r] * inv : 1.0f;
        u64 at = ((u64)blk.b * t + i) * blk.h + blk.hh * HEAD_DIM;
        // Columns 2tq and 2tq + 1 of each C tile: one store of the pair.
#pragma unroll
        for (int dn = 0; dn < DT; dn++) {
            int col = dn * 8 + 2 * blk.tq;
            float v[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                v[e] = st.o[dn][2 * r + e] * inv;
                if (Src::SHIFTED) v[e] = fmaf(src.v_bias()[col + e], bv_weight, v[e]);
            }
            if (ctx != 0) store_v<2>(ctx + at + col, v);
            if (ctx16 != 0) store_v16<2>(ctx16 + at + col, v);
        }
        if (!Src::SHIFTED && lse != 0 && blk.tq == 0)
            lse[((u64)blk.b * nh + blk.hh) * t + i] = st.m[r] + logf(st.l[r]);
    }
}

// Arguments and outputs as attention_backward_dq's.
template <typename F>
__device__ __forceinline__ void attention_backward_dq_tc(const float* ops, const u16* ops16, const float* mask,
                                                         const float* dout, const u16* dout16, const float* lse,
                                                         const float* delta, float* dqkv, int t, int p, int nh,
                                                         float scale, u64 key, u64 threshold, float dscale,
                                                         int dropout, u16* dqkv16) {
    typedef typename F::T T;
    ATTENTION_SHARED;  // q, dO, k, v [64, STRIDE]; f32 [64] key bias
    T* tiles[4];
    float* kb = reinterpret_cast<float*>(carve_tiles<F>(smem, tiles));
    T *qs = tiles[0], *dos = tiles[1], *ks = tiles[2], *vs = tiles[3];
    const MmaBlock blk(mask, t, p, nh);
    const T* rows = F::rows(Operands(ops, ops16, blk.b, blk.hh, nh, t, blk.n));
    int i0 = blockIdx.x * MMA_ROWS;
    copy_mma_tile<F>(qs, rows, i0, t);
    copy_mma_tile<F>(dos, F::rows(HeadRows(dout, dout16, blk.b, blk.hh, nh, t)), i0, t);
    int qrows[2] = {i0 + blk.warp * 16 + blk.g, i0 + blk.warp * 16 + blk.g + 8};
    // Per row: lse in log2 units (+inf where the row takes no key: a
    // uniform row, which does not depend on q or k, or a row past T), delta,
    // and the dropout z of its column 2tq of key 0.
    float li[2], di[2];
    u64 z[2];
    for (int r = 0; r < 2; r++) {
        u64 stat = ((u64)blk.b * nh + blk.hh) * t + min(qrows[r], t - 1);
        li[r] = blk.any && qrows[r] < t ? lse[stat] * LOG2E : POS_INF;
        di[r] = delta[stat];
        z[r] = drop_z(key, stat * blk.n + 2 * blk.tq);
    }
    float drop_scale = dropout ? dscale : 1.0f;
    float dq[DT][4] = {};
    const T* qw = qs + blk.warp * 16 * F::STRIDE;
    const T* dw = dos + blk.warp * 16 * F::STRIDE;
    for (int j0 = 0; j0 < blk.n; j0 += MMA_ROWS) {
        __syncthreads();
        copy_mma_tile<F>(ks, rows + (u64)t * HEAD_DIM, j0, blk.n);
        copy_mma_tile<F>(vs, rows + (u64)(t + blk.n) * HEAD_DIM, j0, blk.n);
        store_key_bias(kb, tile_key_flag(mask, blk, j0, t, p));
        copy_wait();
        __syncthreads();
        if (i0 + blk.warp * 16 >= t) continue;  // no query of this warp: it only loads
        const u64 zt[2] = {z[0] + (u64)j0 * DROP_STEP, z[1] + (u64)j0 * DROP_STEP};
        u32 keep = keep_bits(dropout, zt, DROP_STEP, threshold);
        float s[KT][4] = {}, dp[KT][4] = {};
        mma_rows_by_rows<F>(qw, ks, s, blk.g, blk.tq);
        mma_rows_by_rows<F>(dw, vs, dp, blk.g, blk.tq);
#pragma unroll
        for (int nt = 0; nt < KT; nt++) {
            float2 bias = column_pair(kb, nt, blk.tq);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = e >> 1;
                float pr = exp2_approx(fmaf(s[nt][e] + (e & 1 ? bias.y : bias.x), LOG2E, -li[r]));
                float dpv = dp[nt][e] * keep_factor(keep, nt * 4 + e, drop_scale);
                s[nt][e] = pr * (dpv - di[r]) * scale;  // dS
            }
        }
        mma_tiles_by_cols<F>(s, ks, dq, blk.g, blk.tq);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (qrows[r] >= t) continue;
        u64 at = ((u64)blk.b * t + qrows[r]) * 3 * blk.h + blk.hh * HEAD_DIM;
#pragma unroll
        for (int dn = 0; dn < DT; dn++)
#pragma unroll
            for (int e = 0; e < 2; e++) store_grad1(dqkv, dqkv16, at + dn * 8 + 2 * blk.tq + e, dq[dn][2 * r + e]);
    }
}

// Arguments and outputs as attention_backward_dkv's: a block per 64 keys.
template <typename F>
__device__ __forceinline__ void attention_backward_dkv_tc(const float* ops, const u16* ops16, const float* mask,
                                                          const float* dout, const u16* dout16, const float* lse,
                                                          const float* delta, float* dqkv, float* dprefix, int t,
                                                          int p, int nh, int n_keys, u64 key, u64 threshold,
                                                          float dscale, int dropout, u16* dqkv16) {
    typedef typename F::T T;
    ATTENTION_SHARED;  // k, v, q, dO [64, STRIDE]; f32 lse (log2 units), delta [64]
    T* tiles[4];
    T* next = carve_tiles<F>(smem, tiles);
    T *ks = tiles[0], *vs = tiles[1], *qs = tiles[2], *dos = tiles[3];
    float* ls = reinterpret_cast<float*>(next);
    float* dl = ls + MMA_ROWS;
    const MmaBlock blk(mask, t, p, nh);
    const T* rows = F::rows(Operands(ops, ops16, blk.b, blk.hh, nh, t, blk.n));
    const T* d_rows = F::rows(HeadRows(dout, dout16, blk.b, blk.hh, nh, t));
    int j0 = blockIdx.x * MMA_ROWS;
    copy_mma_tile<F>(ks, rows + (u64)t * HEAD_DIM, j0, n_keys);
    copy_mma_tile<F>(vs, rows + (u64)(t + blk.n) * HEAD_DIM, j0, n_keys);
    int keys[2] = {j0 + blk.warp * 16 + blk.g, j0 + blk.warp * 16 + blk.g + 8};
    bool used[2];
    for (int r = 0; r < 2; r++) used[r] = keys[r] < n_keys && key_used(mask, blk.b, keys[r], t, p, blk.any);
    float dk[DT][4] = {}, dv[DT][4] = {};
    const T* kw = ks + blk.warp * 16 * F::STRIDE;
    const T* vw = vs + blk.warp * 16 * F::STRIDE;
    u64 stat0 = ((u64)blk.b * nh + blk.hh) * t;
    float drop_scale = dropout ? dscale : 1.0f;
    for (int i0 = 0; i0 < t; i0 += MMA_ROWS) {
        __syncthreads();
        copy_mma_tile<F>(qs, rows, i0, t);  // q * scale: dK = dSᵀ (q * scale)
        copy_mma_tile<F>(dos, d_rows, i0, t);
        // Past T: lse +inf, so those queries get probability 0.
        for (int e = threadIdx.x; e < MMA_ROWS; e += blockDim.x) {
            ls[e] = i0 + e < t ? lse[stat0 + i0 + e] * LOG2E : POS_INF;
            dl[e] = i0 + e < t ? delta[stat0 + i0 + e] : 0.0f;
        }
        copy_wait();
        __syncthreads();
        if (j0 + blk.warp * 16 >= n_keys) continue;  // no key of this warp: it only loads
        // Dropout of (query i0 + 2tq, key keys[r]); a query further adds n steps.
        u64 z[2];
        for (int r = 0; r < 2; r++) z[r] = drop_z(key, (stat0 + i0 + 2 * blk.tq) * blk.n + keys[r]);
        u32 keep = keep_bits(dropout, z, (u64)blk.n * DROP_STEP, threshold);
        // Sᵀ and dPᵀ: 16 keys of this warp against 64 queries.
        float st[KT][4] = {}, dpt[KT][4] = {};
        mma_rows_by_rows<F>(kw, qs, st, blk.g, blk.tq);
        mma_rows_by_rows<F>(vw, dos, dpt, blk.g, blk.tq);
        // P (a uniform row averages the values: dV but no dK), then dSᵀ
        // and (P · dropout)ᵀ.
#pragma unroll
        for (int nt = 0; nt < KT; nt++) {
            float2 lq = column_pair(ls, nt, blk.tq), d = column_pair(dl, nt, blk.tq);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = blk.any ? st[nt][e] : 0.0f;
                float pr = used[e >> 1] ? exp2_approx(fmaf(x, LOG2E, -(e & 1 ? lq.y : lq.x))) : 0.0f;
                float f = keep_factor(keep, nt * 4 + e, drop_scale);
                dpt[nt][e] = blk.any ? pr * (dpt[nt][e] * f - (e & 1 ? d.y : d.x)) : 0.0f;
                st[nt][e] = pr * f;
            }
        }
        mma_tiles_by_cols<F>(st, dos, dv, blk.g, blk.tq);
        mma_tiles_by_cols<F>(dpt, qs, dk, blk.g, blk.tq);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int j = keys[r];
        if (j >= n_keys) continue;
#pragma unroll
        for (int dn = 0; dn < DT; dn++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int col = dn * 8 + 2 * blk.tq + e;
                if (j < p) {
                    float* out = dprefix + ((u64)blk.b * p + j) * 2 * blk.h + blk.hh * HEAD_DIM;
                    out[col] = dk[dn][2 * r + e];
                    out[blk.h + col] = dv[dn][2 * r + e];
                } else if (dqkv != 0 || dqkv16 != 0) {
                    u64 at = ((u64)blk.b * t + (j - p)) * 3 * blk.h + blk.h + blk.hh * HEAD_DIM + col;
                    store_grad1(dqkv, dqkv16, at, dk[dn][2 * r + e]);
                    store_grad1(dqkv, dqkv16, at + blk.h, dv[dn][2 * r + e]);
                }
            }
    }
}

// The kernels of one format: mma_self_test_<fmt> and
// attention_{forward,backward_dq,backward_dkv}_<fmt>, whose arguments are
// those of the f32 kernels. BLOCKS blocks of the forward and of dQ on a
// multiprocessor at least, DKV_BLOCKS of dK/dV, which holds the most
// registers (ptxas, sm_90, head size 64: bf16 fits 4 blocks of the forward
// and dQ without spills, 3 at head size 128; tf32's dQ spills 136 bytes in
// 4 and none in 3; dK/dV takes 168 registers in bf16 and tf32, tf32x3 253,
// so 2).
#define TENSOR_CORE_ATTENTION(fmt, F, BLOCKS, DKV_BLOCKS)                                                   \
    extern "C" __global__ void mma_self_test_##fmt(float* out) { mma_self_test<F>(out); }                       \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS, BLOCKS)                                           \
        attention_forward_##fmt(const float* ops, const u16* ops16, const float* mask, float* ctx, float* lse,  \
                                int t, int p, int nh, u64 key, u64 threshold, float dscale, int dropout,        \
                                u16* ctx16) {                                                                    \
        const OpsSource<F> src{F::rows(Operands(ops, ops16, blockIdx.z, blockIdx.y, nh, t, p + t)), t, p + t};     \
        attention_forward_tc<F>(src, mask, ctx, lse, t, p, nh, key, threshold, dscale, dropout, ctx16);           \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS, BLOCKS) attention_backward_dq_##fmt(              \
        const float* ops, const u16* ops16, const float* mask, const float* dout, const u16* dout16,            \
        const float* lse, const float* delta, float* dqkv, int t, int p, int nh, float scale, u64 key,          \
        u64 threshold, float dscale, int dropout, u16* dqkv16) {                                                 \
        attention_backward_dq_tc<F>(ops, ops16, mask, dout, dout16, lse, delta, dqkv, t, p, nh, scale, key,     \
                                    threshold, dscale, dropout, dqkv16);                                         \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS, DKV_BLOCKS) attention_backward_dkv_##fmt(         \
        const float* ops, const u16* ops16, const float* mask, const float* dout, const u16* dout16,            \
        const float* lse, const float* delta, float* dqkv, float* dprefix, int t, int p, int nh, int n_keys,    \
        u64 key, u64 threshold, float dscale, int dropout, u16* dqkv16) {                                        \
        attention_backward_dkv_tc<F>(ops, ops16, mask, dout, dout16, lse, delta, dqkv, dprefix, t, p, nh,       \
                                     n_keys, key, threshold, dscale, dropout, dqkv16);                           \
    }

TENSOR_CORE_ATTENTION(tf32, Tf32Format, 3, 3)
TENSOR_CORE_ATTENTION(tf32x3, Tf32x3Format, 3, 2)
#if HEAD_DIM % 16 == 0
TENSOR_CORE_ATTENTION(bf16, Bf16Format, HEAD_DIM > 64 ? 3 : 4, 3)

// The bf16 forward's operands without attention_operands' pass over them:
// q, k and v straight from the QKV GEMM's bf16 output qkv16 [B·T, 3H],
// without their bias qkv_bias [3H]; the prefix's keys and values from
// prefix16 [B, NH, 2P, HD], less the key and value biases
// (attention_operands' format with T = 0 and minus_bias). q gets its bias
// and the scale as its tile is loaded, rounded as attention_operands
// rounds it (the same bits); k and v are copied as they are
// (attention_forward_tc's SHIFTED).
struct QkvSource {
    static constexpr bool SHIFTED = true;
    const u16 *qkv16, *prefix16;
    const float* bias;
    float scale;
    int b, hh, t, p, n, h, pb;
    // Token row i of qkv16 from column col on.
    __device__ const u16* token(int i, int col) const { return qkv16 + ((u64)b * t + i) * 3 * h + col; }
    // Row r of this (batch row, head)'s prefix keys (r < P) and values:
    // batch row 0's for all when `pb` (the prefix's batch row) is 0.
    __device__ const u16* prefix(int r) const {
        return prefix16 + (((u64)pb * (h / HEAD_DIM) + hh) * 2 * p + r) * HEAD_DIM;
    }
    // Query rows i0 .. i0 + 63 with their bias, times the scale, zeros from
    // row `count` on: every load of a thread issued before any is used, so
    // that it waits on global memory once, not once a chunk.
    __device__ void load_q(u16* qs, int i0, int count) const {
        load_rows<MMA_ROWS, MMA_THREADS, HEAD_DIM / 8>(
            i0, count, [this](int i) { return RowRef{0, token(i, hh * HEAD_DIM), bias + hh * HEAD_DIM}; },
            [qs](int r, int d, const float* v) { store_either<4>(0, qs, (u64)r * Bf16Format::STRIDE + d, v); }, scale);
    }
    __device__ void load_k(u16* ks, int j0) const {
        copy_tile_rows<Bf16Format>(ks, j0, n, [this](int j) {
            return j < p ? prefix(j) : token(j - p, h + hh * HEAD_DIM);
        });
    }
    __device__ void load_v(u16* vs, int j0) const {
        copy_tile_rows<Bf16Format>(vs, j0, n, [this](int j) {
            return j < p ? prefix(p + j) : token(j - p, 2 * h + hh * HEAD_DIM);
        });
    }
    __device__ const float* v_bias() const { return bias + 2 * h + hh * HEAD_DIM; }
};

// Inference's bf16 attention (and any forward whose operands no backward
// reads): attention_forward_bf16's ctx and ctx16 (no lse) on its grid, from
// qkv16, qkv_bias, prefix16 (QkvSource; 0 without a prefix; with
// `prefix_shared`, batch row 0's alone, for every row) and `scale`, 1/√HD.
extern "C" __global__ void attention_forward_qkv_bf16(const u16* qkv16, const float* qkv_bias, const u16* prefix16,
                                                      int prefix_shared, const float* mask, float* ctx, int t, int p,
                                                      int nh, float scale, u64 key, u64 threshold, float dscale,
                                                      int dropout, u16* ctx16) {
    int b = blockIdx.z;
    const QkvSource src{qkv16, prefix16, qkv_bias, scale, b, (int)blockIdx.y, t, p, p + t, nh * HEAD_DIM,
                        prefix_shared ? 0 : b};
    attention_forward_tc<Bf16Format>(src, mask, ctx, 0, t, p, nh, key, threshold, dscale, dropout, ctx16);
}
#endif
#endif  // HEAD_DIM % 8 == 0
