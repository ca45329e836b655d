// ---------------------------------------------------------------------------
// 3xTF32: fp32 GEMMs on the tf32 tensor cores (engine/cuda/tf32x3.rs).
//
// x = hi + lo, hi = x rounded to tf32 and lo = (x - hi) rounded to tf32
// (|lo| <= 2^-11 |x|). Both are exact tf32 values, so the tensor cores read
// them unchanged whether they round their inputs or drop the low bits.
// hi·hi' + hi·lo' + lo·hi' misses x·x' by lo·lo' and lo's rounding, about
// 2^-22 of |x·x'|, against 2^-24 for an f32 product: f32 accuracy at tf32
// speed, as CUTLASS's "3xTF32" GEMMs. A non-finite x splits into (x, 0);
// a finite x that rounds up to infinity keeps its truncation as hi. hi may
// be x itself (the weights are split in place when uploaded).
extern "C" __global__ void split_tf32(const float* x, float* hi, float* lo, u64 n) {
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) {
        float v = x[e];
        u32 bits = __float_as_uint(v);
        float h = v, l = 0.0f;
        if ((bits & 0x7f800000u) != 0x7f800000u) {
            h = tf32_round(v);
            if ((__float_as_uint(h) & 0x7fffffffu) == 0x7f800000u) h = __uint_as_float(bits & 0xffffe000u);
            l = tf32_round(v - h);
        }
        hi[e] = h;
        lo[e] = l;
    }
}
