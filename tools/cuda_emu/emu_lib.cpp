// kernels.cu as a shared library for the Rust engine's emulated device
// (CudaDevice::emulated): the same kernels, launched by name through emu.h,
// so the whole CUDA encoder (launch order, pointers, GEMM layout) can run on
// a machine without a GPU. Build: g++ -std=c++20 -O2 -shared -fPIC
// -DHEAD_DIM=<hd> emu_lib.cpp -o libptuning_cuda_emu.so
#include "emu.h"

#include "../../src/engine/cuda/kernels/kernels.cu"

#include <cstring>
#include <utility>

// A launch argument slot as the kernel's parameter: pointers and u64 as they
// are, int from the low 32 bits, float from its bit pattern.
template <typename T>
T from_slot(u64 s) {
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>(static_cast<std::uintptr_t>(s));
    } else if constexpr (std::is_same_v<T, float>) {
        unsigned bits = static_cast<unsigned>(s);
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    } else {
        return static_cast<T>(s);
    }
}

template <typename... P, std::size_t... I>
void call(void (*k)(P...), Dim3 g, unsigned b, const u64* a, std::index_sequence<I...>) {
    launch(k, g, b, from_slot<P>(a[I])...);
}

template <typename... P>
int call(void (*k)(P...), Dim3 g, unsigned b, const u64* a, int n) {
    if (n != (int)sizeof...(P)) return -2;
    call(k, g, b, a, std::index_sequence_for<P...>{});
    return 0;
}

#define KERNEL(name) \
    if (std::strcmp(kernel, #name) == 0) return call(name, g, block, args, nargs);

// 0: ran; -1: no such kernel; -2: wrong argument count. `order`: the
// threads' order (thread_order in emu.h); `shared_bytes`: the dynamic shared
// memory the launch asks for (shared_limit).
extern "C" int ptuning_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned block,
                                  const u64* args, int nargs, int order, unsigned shared_bytes) {
    Dim3 g{gx, gy, gz};
    thread_order = order;
    shared_limit = shared_bytes;
    KERNEL(dropout_apply)
    KERNEL(dropout_copy)
    KERNEL(embed_layernorm)
    KERNEL(bias_dropout_residual_layernorm)
    KERNEL(residual_layernorm)
    KERNEL(residual16_layernorm)
    KERNEL(residual16_layernorm_f32)
    KERNEL(layernorm_backward)
    KERNEL(bias_gelu)
    KERNEL(bias_gelu_bf16)
    KERNEL(gelu_backward)
    KERNEL(bias_tanh)
    KERNEL(tanh_backward)
    KERNEL(cross_entropy)
    KERNEL(squared_error)
    KERNEL(attention_operands)
    KERNEL(attention_forward)
    KERNEL(attention_delta)
    KERNEL(attention_backward_dq)
    KERNEL(attention_backward_dkv)
#if HEAD_DIM % 8 == 0
    KERNEL(mma_self_test_tf32)
    KERNEL(attention_forward_tf32)
    KERNEL(attention_backward_dq_tf32)
    KERNEL(attention_backward_dkv_tf32)
    KERNEL(mma_self_test_tf32x3)
    KERNEL(attention_forward_tf32x3)
    KERNEL(attention_backward_dq_tf32x3)
    KERNEL(attention_backward_dkv_tf32x3)
#endif
#if HEAD_DIM % 16 == 0
    KERNEL(mma_self_test_bf16)
    KERNEL(attention_forward_bf16)
    KERNEL(attention_backward_dq_bf16)
    KERNEL(attention_backward_dkv_bf16)
    KERNEL(attention_forward_qkv_bf16)
#endif
    KERNEL(expand_prefix)
    KERNEL(reduce_prefix)
    KERNEL(gather_rows)
    KERNEL(scatter_rows)
    KERNEL(broadcast_rows)
    KERNEL(adamw_step)
    KERNEL(scale)
    KERNEL(sum_squares)
    KERNEL(split_tf32)
    return -1;
}

extern "C" int ptuning_emu_head_dim() { return HEAD_DIM; }
