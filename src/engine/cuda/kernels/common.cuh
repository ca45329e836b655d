// What every part uses: integer types, bf16 and tf32 rounding, block reductions.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

// In bf16, every GEMM input is written in bf16 by the kernel that produces
// it (a `u16*` argument, null in fp32/tf32): an activation that is needed
// later in f32 too gets both copies, one that only feeds the GEMM gets the
// bf16 copy alone. The forward's GEMMs write their outputs in bf16 too,
// which the kernel after each reads (a `const u16*` argument) with the bias
// added in f32. Round to nearest even, NaN kept quiet: what the bf16 GEMMs
// read. On sm_80 and later one cvt.rn does it (the integer sequence took
// about 8 instructions an element, a fifth of bias + GELU's); there a NaN
// becomes the canonical NaN instead of keeping its payload.
__device__ __forceinline__ u16 bf16_bits(float v) {
#if __CUDA_ARCH__ >= 800
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
#else
    u32 bits = __float_as_uint(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (u16)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (u16)(bits >> 16);
#endif
}

// bf16_bits of two values in one register, lo in the low half (the lower
// address): one cvt.rn.bf16x2 on sm_80 and later.
__device__ __forceinline__ u32 bf16x2_bits(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (u32)bf16_bits(lo) | ((u32)bf16_bits(hi) << 16);
#endif
}

// A bf16 value (its bits) as f32, exactly.
__device__ __forceinline__ float bf16_float(u16 bits) { return __uint_as_float((u32)bits << 16); }

// v rounded to tf32 as cvt.rna.tf32.f32 does (to nearest, ties away from
// zero; the low 13 bits zero; NaN kept): what the tf32 tensor cores read.
__device__ __forceinline__ float tf32_round(float v) {
    u32 bits = __float_as_uint(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return v;
    return __uint_as_float((bits + 0x1000u) & 0xffffe000u);
}

// Four f32 at p (16-byte aligned) in one access.
__device__ __forceinline__ void ld4(const float* p, float* out) {
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

__device__ __forceinline__ void st4(float* p, const float* v) {
    float4 x;
    x.x = v[0];
    x.y = v[1];
    x.z = v[2];
    x.w = v[3];
    *reinterpret_cast<float4*>(p) = x;
}

// V (1 or 4; stores 2 too) consecutive elements at p in one access: 16
// bytes of f32, 8 of bf16 (as f32, exactly) when V is 4 (p then 16-byte
// aligned for f32, 8-byte for bf16), 8 and 4 when V is 2 (p aligned so).
template <int V>
__device__ __forceinline__ void load_v(const float* p, float* v) {
    if constexpr (V == 4) {
        ld4(p, v);
    } else {
        v[0] = *p;
    }
}
template <int V>
__device__ __forceinline__ void load_v16(const u16* p, float* v) {
    if constexpr (V == 4) {
        u64 bits = *reinterpret_cast<const u64*>(p);
        for (int k = 0; k < 4; k++) v[k] = bf16_float((u16)(bits >> (16 * k)));
    } else {
        v[0] = bf16_float(*p);
    }
}
template <int V>
__device__ __forceinline__ void store_v(float* p, const float* v) {
    if constexpr (V == 4) {
        st4(p, v);
    } else if constexpr (V == 2) {
        float2 x;
        x.x = v[0];
        x.y = v[1];
        *reinterpret_cast<float2*>(p) = x;
    } else {
        *p = v[0];
    }
}
template <int V>
__device__ __forceinline__ void store_v16(u16* p, const float* v) {
    if constexpr (V == 4) {
        *reinterpret_cast<u64*>(p) = (u64)bf16x2_bits(v[0], v[1]) | ((u64)bf16x2_bits(v[2], v[3]) << 32);
    } else if constexpr (V == 2) {
        *reinterpret_cast<u32*>(p) = bf16x2_bits(v[0], v[1]);
    } else {
        *p = bf16_bits(v[0]);
    }
}

// Elements i .. i + V - 1 of an array held in f32 (p) or, when p16 is not
// null, in bf16: read as f32, or written rounded to that format.
template <int V>
__device__ __forceinline__ void load_either(const float* p, const u16* p16, u64 i, float* v) {
    if (p16 != 0) {
        load_v16<V>(p16 + i, v);
    } else {
        load_v<V>(p + i, v);
    }
}
template <int V>
__device__ __forceinline__ void store_either(float* p, u16* p16, u64 i, const float* v) {
    if (p16 != 0) {
        store_v16<V>(p16 + i, v);
    } else {
        store_v<V>(p + i, v);
    }
}

// 2^x by the special function unit (ex2.approx, flushing subnormal results
// to 0, relative error about 2^-22): the attention's softmax takes e^s as
// 2^(s log2 e - max log2 e), one FFMA and one MUFU where expf took eight
// instructions (forward and backward alike, so the backward recomputes the
// forward's probabilities); the bf16 GELU its Φ. The emulator takes exp2f.
#define LOG2E 1.4426950408889634f
__device__ __forceinline__ float exp2_approx(float x) {
#if !defined(MMA_EMULATED)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

// Whether every pointer is 16-byte aligned (null is).
template <typename... P>
__device__ __forceinline__ bool aligned16(const P*... p) {
    return ((((u64)p & 15) == 0) && ...);
}

#define NEG_INF __int_as_float(0xff800000)  // -inf: masked scores, the max of nothing
#define POS_INF __int_as_float(0x7f800000)  // +inf: the log-sum-exp of rows that take no key

// ---------------------------------------------------------------------------
// Block reductions (blockDim.x a multiple of 32, at most 1024).

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum over the block, returned to every thread. `shared` holds 32 floats.
__device__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? shared[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    float total = shared[0];
    __syncthreads();
    return total;
}
