// A CPU emulator for src/engine/cuda/kernels/, to check the kernels'
// index arithmetic, shared-memory tiling and reductions on a machine without
// a GPU. Blocks run one after another; the threads of a block run as real OS
// threads, so __syncthreads is a barrier, __shared__ memory is one static
// copy reused block after block, and warp shuffles meet at a per-warp
// barrier. Semantics only: nothing here says anything about speed.
#pragma once
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float shuffle_slots[1024];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// The attention kernels' dynamic shared memory: one static array per kernel,
// larger than any launch asks for.
#define ATTENTION_SHARED static __attribute__((aligned(16))) float smem[1 << 16]

struct alignas(16) float4 {
    float x, y, z, w;
};

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    unsigned t = threadIdx.x;
    auto& bar = *warp_barriers[t / 32];
    shuffle_slots[t] = v;
    bar.arrive_and_wait();
    float r = shuffle_slots[t ^ lane_mask];
    bar.arrive_and_wait();
    return r;
}

// mma.sync for one warp, f32 accumulation, with the fragment layouts that
// kernels.cu documents: bf16 m16n8k16 (two k in a register) and tf32
// m16n8k8 (one k in a register, of which the tensor cores read the top 19
// bits). The lanes publish their fragments, meet, and each computes its own
// four outputs.
#define MMA_EMULATED
inline unsigned mma_a_slots[1024][4], mma_b_slots[1024][2];

inline float bits_value(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// K: the k of the instruction; value(register, k): the input of that k.
template <int K, typename Value>
inline void mma_emulated(float d[4], const unsigned a[4], const unsigned b[2], const float c[4], Value value) {
    constexpr int per_reg = K / 8;
    unsigned t = threadIdx.x, base = t / 32 * 32, lane = t % 32;
    auto& bar = *warp_barriers[t / 32];
    for (int i = 0; i < 4; i++) mma_a_slots[t][i] = a[i];
    for (int i = 0; i < 2; i++) mma_b_slots[t][i] = b[i];
    float acc[4] = {c[0], c[1], c[2], c[3]};
    bar.arrive_and_wait();
    auto av = [&](int r, int k) {
        return value(mma_a_slots[base + (r % 8) * 4 + (k % (K / 2)) / per_reg][(k >= K / 2 ? 2 : 0) + (r >= 8 ? 1 : 0)], k);
    };
    auto bv = [&](int k, int n) { return value(mma_b_slots[base + n * 4 + (k % (K / 2)) / per_reg][k >= K / 2 ? 1 : 0], k); };
    int g = lane / 4, tq = lane % 4;
    for (int e = 0; e < 4; e++) {
        int r = g + (e >= 2 ? 8 : 0), col = 2 * tq + (e & 1);
        for (int k = 0; k < K; k++) acc[e] += av(r, k) * bv(k, col);
    }
    bar.arrive_and_wait();
    for (int e = 0; e < 4; e++) d[e] = acc[e];
}

inline void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_emulated<16>(d, a, b, c, [](unsigned w, int k) { return bits_value((k % 2 ? w >> 16 : w & 0xffffu) << 16); });
}

inline void mma_tf32_1688(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_emulated<8>(d, a, b, c, [](unsigned w, int) { return bits_value(w & 0xffffe000u); });
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float __uint_as_float(unsigned u) { return bits_value(u); }
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
// expf, logf, sqrtf, erff, fmaxf: the C library's, from <math.h>.
// The round-to-nearest arithmetic intrinsics: plain IEEE f32 operations here
// (x86-64 without FMA contracts nothing).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline int min(int a, int b) { return a < b ? a : b; }

// A launch argument as the kernel's parameter type: addresses come as u64,
// as the Rust side passes raw device pointers.
template <typename To, typename From>
To as_param(From f) {
    if constexpr (std::is_pointer_v<To> && std::is_integral_v<From>)
        return reinterpret_cast<To>(static_cast<std::uintptr_t>(f));
    else
        return static_cast<To>(f);
}

// Runs kernel(args...) over grid × block (block.y = block.z = 1): `block`
// OS threads take the blocks one after another, meeting at a barrier after
// each block so that its shared memory is free for the next one.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), Dim3 grid, unsigned block, A... args) {
    gridDim = grid;
    blockDim = Dim3{block, 1, 1};
    std::barrier<> bar(block);
    block_barrier = &bar;
    warp_barriers.clear();
    for (unsigned w = 0; w < (block + 31) / 32; w++)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, block - 32 * w)));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; t++)
        threads.emplace_back([=, &bar] {
            threadIdx = Dim3{t, 0, 0};
            for (unsigned z = 0; z < grid.z; z++)
                for (unsigned y = 0; y < grid.y; y++)
                    for (unsigned x = 0; x < grid.x; x++) {
                        blockIdx = Dim3{x, y, z};
                        kernel(as_param<P>(args)...);
                        bar.arrive_and_wait();
                    }
        });
    for (auto& th : threads) th.join();
}
