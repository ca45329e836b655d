// ---------------------------------------------------------------------------
// Dropout: src/engine/cpu/dropout.rs, bit for bit.
//   key = seed ^ (stream * 0x9E3779B97F4A7C15)
//   z = key + index * 0xD1B54A32D192ED03, splitmix64 finalizer, keep iff
//   (u >> 40) >= threshold, threshold = ceil(p * 2^24); kept * scale.

__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// z of element `index` at a site: `key` = seed ^ (stream *
// 0x9E3779B97F4A7C15), computed on the host. z of index + k is z + k *
// DROP_STEP (mod 2^64): the attention kernels step along a row so.
#define DROP_STEP 0xD1B54A32D192ED03ULL
__device__ __forceinline__ u64 drop_z(u64 key, u64 index) { return key + index * DROP_STEP; }

// Whether the element with that z is kept.
__device__ __forceinline__ bool drop_kept(u64 z, u64 threshold) { return (mix64(z) >> 40) >= threshold; }

// The factor of element `index` at a site: scale if kept, 0 if dropped.
__device__ __forceinline__ float drop_factor(u64 key, u64 threshold, float scale, u64 index) {
    return drop_kept(drop_z(key, index), threshold) ? scale : 0.0f;
}

// x[i] = x[i] * factor(offset + i); threshold > 2^24 never keeps.
extern "C" __global__ void dropout_apply(float* x, u64 n, u64 key, u64 threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float f = drop_factor(key, threshold, scale, i);
        x[i] = f == 0.0f ? 0.0f : x[i] * f;
    }
}

// Element i of dst = dropout(v) when `enabled` (else v), into dst16 in
// bf16 instead when it is not null (a gradient that feeds a bf16 GEMM and
// nothing else).
__device__ __forceinline__ void store_dropped(float v, u64 i, u64 key, u64 threshold, float scale, int enabled,
                                              float* dst, u16* dst16) {
    if (enabled) {
        float f = drop_factor(key, threshold, scale, i);
        v = f == 0.0f ? 0.0f : v * f;
    }
    if (dst16 != 0) {
        dst16[i] = bf16_bits(v);
    } else {
        dst[i] = v;
    }
}

// dst = dropout(src) (the backward of dropout on a gradient, keeping src),
// as store_dropped writes it.
extern "C" __global__ void dropout_copy(const float* src, float* dst, u64 n, u64 key, u64 threshold,
                                        float scale, int enabled, u16* dst16) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        store_dropped(src[i], i, key, threshold, scale, enabled, dst, dst16);
}
