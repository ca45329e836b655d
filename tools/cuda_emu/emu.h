// A CPU emulator for src/engine/cuda/kernels/, to check the kernels'
// index arithmetic, shared-memory tiling and reductions on a machine without
// a GPU. Blocks run one after another; the threads of a block run as fibers
// on the calling thread, one at a time, each until it meets a
// barrier: __syncthreads, or a warp's meeting in a shuffle or an mma. The
// schedule is deterministic, and PTUNING_EMU_ORDER=reverse runs the blocks,
// and the threads of each step, in the opposite order. Between two barriers
// every thread runs whole, before or after every other, so a race (a thread
// reading or overwriting what another writes without a barrier between
// them, or two blocks writing one element) gives different results in the
// two orders: run both and compare. The
// dynamic shared memory is filled with NaN before each block, as a real
// block finds it holding garbage, up to the size the launch asked for (past
// it, a canary that a block may not overwrite). A barrier some threads never
// reach, or a warp meeting with lanes missing, stops the process with a
// message.
// Semantics only: nothing here says anything about speed.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline Dim3 threadIdx, blockIdx, blockDim, gridDim;
inline float shuffle_slots[1024];

// The scheduler: one fiber per thread of the running block.
namespace emu {
enum State { RUNNABLE, AT_BLOCK, AT_WARP, DONE };

inline void (*body)(void*) = nullptr;  // the kernel call of this launch
inline void* body_arg = nullptr;
void fiber_exit();

// A fiber's saved registers. On x86-64, a stack pointer and a switch of
// the callee-saved registers (glibc's swapcontext also saves the signal
// mask, a system call each time, and took three quarters of the time);
// elsewhere, ucontext.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
extern "C" void ptuning_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl ptuning_emu_switch
    .type ptuning_emu_switch, @function
ptuning_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ptuning_emu_switch, .-ptuning_emu_switch
)");
inline void switch_to(Context& save, const Context& load) { ptuning_emu_switch(&save.sp, load.sp); }

[[noreturn]] inline void fiber_start() {
    body(body_arg);
    fiber_exit();
    __builtin_unreachable();
}

// A context that starts fiber_start on `stack`, as if called: the first
// switch pops six zero registers and returns into it.
inline void make_context(Context& c, char* stack, std::size_t bytes) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15};
    auto* slot = reinterpret_cast<void**>(top);
    *--slot = nullptr;  // fiber_start's return address: it never returns
    *--slot = reinterpret_cast<void*>(&fiber_start);
    for (int r = 0; r < 6; r++) *--slot = nullptr;
    c.sp = slot;
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_to(Context& save, const Context& load) { swapcontext(&save.uc, &load.uc); }

inline void fiber_start() {
    body(body_arg);
    fiber_exit();
}

inline void make_context(Context& c, char* stack, std::size_t bytes) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fiber_start, 0);
}
#endif

struct Fiber {
    Context context;
    State state;
};
constexpr std::size_t STACK_BYTES = 256 << 10;
inline Context scheduler;
inline std::vector<Fiber> fibers;
inline std::vector<std::unique_ptr<char[]>> stacks;
inline Fiber* running = nullptr;

// The running thread returned from the kernel: back to the scheduler for good.
inline void fiber_exit() {
    running->state = DONE;
    switch_to(running->context, scheduler);
}

// The running thread waits at a barrier: back to the scheduler.
inline void wait(State at) {
    running->state = at;
    switch_to(running->context, scheduler);
}

[[noreturn]] inline void stuck(const char* what, unsigned thread) {
    std::fprintf(stderr, "cuda_emu: block (%u,%u,%u): %s (thread %u)\n", blockIdx.x, blockIdx.y, blockIdx.z, what,
                 thread);
    std::abort();
}

// Releases the barriers every thread they wait for has reached; false when
// no thread can run and some have not finished (a deadlock).
inline bool release() {
    unsigned n = fibers.size(), at_block = 0, done = 0;
    bool any = false;
    for (unsigned w = 0; w < n; w += 32) {
        unsigned end = std::min(n, w + 32), at_warp = 0;
        for (unsigned t = w; t < end; t++) at_warp += fibers[t].state == AT_WARP;
        if (at_warp == 0) continue;
        if (at_warp != end - w) {
            for (unsigned t = w; t < end; t++)
                if (fibers[t].state != AT_WARP) stuck("a warp meets (shuffle or mma) with a lane elsewhere", t);
        }
        for (unsigned t = w; t < end; t++) fibers[t].state = RUNNABLE;
        any = true;
    }
    for (auto& f : fibers) {
        at_block += f.state == AT_BLOCK;
        done += f.state == DONE;
    }
    if (at_block > 0 && at_block + done == n) {
        if (done > 0) {
            for (unsigned t = 0; t < n; t++)
                if (fibers[t].state == DONE) stuck("__syncthreads waits for a thread that has returned", t);
        }
        for (auto& f : fibers) f.state = RUNNABLE;
        any = true;
    }
    return any || done == n;
}

// Runs one block: every thread until it waits or returns, in thread order
// (or reversed), then the barriers all have reached open, until all return.
inline void run_block(unsigned threads, bool reverse) {
    fibers.assign(threads, Fiber{});
    while (stacks.size() < threads) stacks.push_back(std::make_unique<char[]>(STACK_BYTES));
    for (unsigned t = 0; t < threads; t++) {
        make_context(fibers[t].context, stacks[t].get(), STACK_BYTES);
        fibers[t].state = RUNNABLE;
    }
    for (;;) {
        for (unsigned i = 0; i < threads; i++) {
            unsigned t = reverse ? threads - 1 - i : i;
            if (fibers[t].state != RUNNABLE) continue;
            running = &fibers[t];
            threadIdx = Dim3{t, 0, 0};
            switch_to(scheduler, fibers[t].context);
        }
        bool all_done = true;
        for (auto& f : fibers) all_done &= f.state == DONE;
        if (all_done) return;
        if (!release()) stuck("deadlock: no thread can go on", 0);
    }
}
}  // namespace emu

#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// The attention kernels' dynamic shared memory: one array, larger than any
// launch asks for. Before each block its first `shared_limit` bytes (what
// the launch asked for) are filled with NaN, as a real block finds garbage
// there, and the rest with a canary (a NaN too, so a read past the limit
// spoils what it touches); a block that wrote past the limit stops the run.
inline __attribute__((aligned(16))) float dynamic_shared[1 << 16];
inline std::size_t shared_limit = sizeof(dynamic_shared);
inline bool shared_used = false;           // by the running block (or the last one)
inline std::size_t filled_for = SIZE_MAX;  // the limit the fill below stands for
constexpr std::uint32_t CANARY = 0x7fc0dead;

inline float* use_dynamic_shared() {
    shared_used = true;
    return dynamic_shared;
}
#define ATTENTION_SHARED float* const smem = use_dynamic_shared()

// The floats of dynamic_shared the launch asked for.
inline std::size_t shared_floats() { return std::min(shared_limit, sizeof(dynamic_shared)) / 4; }

// Fills the dynamic shared memory for the next block (unless it holds the
// fill for this limit, untouched since).
inline void prepare_shared() {
    if (!shared_used && filled_for == shared_limit) return;
    std::size_t used = shared_floats();
    std::fill(dynamic_shared, dynamic_shared + used, NAN);
    float canary;
    std::memcpy(&canary, &CANARY, 4);
    std::fill(dynamic_shared + used, std::end(dynamic_shared), canary);
    filled_for = shared_limit;
    shared_used = false;
}

// After a block: stops the run if it wrote past what the launch asked for.
inline void check_shared() {
    if (!shared_used) return;
    for (std::size_t i = shared_floats(); i < std::size(dynamic_shared); i++) {
        std::uint32_t bits;
        std::memcpy(&bits, &dynamic_shared[i], 4);
        if (bits != CANARY) {
            std::fprintf(stderr,
                         "cuda_emu: block (%u,%u,%u) wrote dynamic shared memory at byte %zu, past the %zu bytes "
                         "the launch asked for\n",
                         blockIdx.x, blockIdx.y, blockIdx.z, 4 * i, shared_limit);
            std::abort();
        }
    }
}

struct alignas(8) float2 {
    float x, y;
};

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

inline void __syncthreads() { emu::wait(emu::AT_BLOCK); }

// The lanes of a warp meet: each has published what the others read.
inline void warp_meet() { emu::wait(emu::AT_WARP); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    unsigned t = threadIdx.x;
    shuffle_slots[t] = v;
    warp_meet();
    float r = shuffle_slots[t ^ lane_mask];
    warp_meet();
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
    for (int i = 0; i < 4; i++) mma_a_slots[t][i] = a[i];
    for (int i = 0; i < 2; i++) mma_b_slots[t][i] = b[i];
    float acc[4] = {c[0], c[1], c[2], c[3]};
    warp_meet();
    auto av = [&](int r, int k) {
        return value(mma_a_slots[base + (r % 8) * 4 + (k % (K / 2)) / per_reg][(k >= K / 2 ? 2 : 0) + (r >= 8 ? 1 : 0)], k);
    };
    auto bv = [&](int k, int n) { return value(mma_b_slots[base + n * 4 + (k % (K / 2)) / per_reg][k >= K / 2 ? 1 : 0], k); };
    int g = lane / 4, tq = lane % 4;
    for (int e = 0; e < 4; e++) {
        int r = g + (e >= 2 ? 8 : 0), col = 2 * tq + (e & 1);
        for (int k = 0; k < K; k++) acc[e] += av(r, k) * bv(k, col);
    }
    warp_meet();
    for (int e = 0; e < 4; e++) d[e] = acc[e];
}

inline void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_emulated<16>(d, a, b, c, [](unsigned w, int k) { return bits_value((k % 2 ? w >> 16 : w & 0xffffu) << 16); });
}

inline void mma_tf32_1688(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_emulated<8>(d, a, b, c, [](unsigned w, int) { return bits_value(w & 0xffffe000u); });
}

// cp.async (attention_mma.cuh's copy16, copy_commit, copy_wait_groups), as
// the PTX ISA orders it: each thread's copies land only when it waits for
// their group (a commit closes the open group; waiting for all but the
// newest n groups lands the older ones), and until then the destination
// holds NaN (all bits set: NaN in f32 and in bf16), where a card's holds
// whatever was there: a read that no wait and barrier order after the copy
// spoils what it touches, as a missing barrier before the copy spoils what
// another warp still reads. The source is read at the copy: the kernels'
// inputs do not change during a launch.
struct PendingCopy {
    void* dst;
    unsigned char bytes[16];
    long group;  // -1 while its group is open
};
inline std::vector<PendingCopy> pending_copies[1024];
inline long committed_groups[1024];

inline void cp_async_emulated(void* dst, const void* src, bool valid) {
    PendingCopy c{dst, {}, -1};
    if (valid) std::memcpy(c.bytes, src, 16);
    std::memset(dst, 0xff, 16);
    pending_copies[threadIdx.x].push_back(c);
}
inline void cp_async_commit_emulated() {
    unsigned t = threadIdx.x;
    for (auto& c : pending_copies[t])
        if (c.group < 0) c.group = committed_groups[t];
    committed_groups[t]++;
}
// Lands every committed group but the newest `newer` (wait_group newer);
// the open group's copies stay (wait_all commits first).
inline void cp_async_wait_emulated(int newer) {
    unsigned t = threadIdx.x;
    auto& q = pending_copies[t];
    long last = committed_groups[t] - newer;  // groups below it land
    std::erase_if(q, [&](const PendingCopy& c) {
        if (c.group < 0 || c.group >= last) return false;
        std::memcpy(c.dst, c.bytes, 16);
        return true;
    });
}
// After a block: every copy waited for (a card's block may end with copies
// in flight to shared memory that nothing reads; none of our kernels does).
inline void check_copies(unsigned block) {
    for (unsigned t = 0; t < block; t++) {
        if (!pending_copies[t].empty()) emu::stuck("cp.async copies never waited for", t);
        committed_groups[t] = 0;
    }
}

// ldmatrix.x4 (attention_mma.cuh's ldmatrix_x4): the lanes publish their
// row addresses, meet, and each gathers its four registers: from matrix j
// (rows given by lanes 8j .. 8j + 7) row lane / 4, values 2(lane % 4) and
// the next; with TRANS, column lane / 4 of rows 2(lane % 4) and the next.
inline const unsigned short* ldmatrix_rows[1024];

template <bool TRANS>
inline void ldmatrix_x4(unsigned r[4], const unsigned short* row) {
    unsigned t = threadIdx.x, base = t / 32 * 32, lane = t % 32;
    // Each row's 16 bytes start on 16 (PTX ISA): a card faults on another
    // address ("misaligned address") where this machine would not.
    if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) emu::stuck("ldmatrix row address not on 16 bytes", t);
    ldmatrix_rows[t] = row;
    warp_meet();
    for (unsigned j = 0; j < 4; j++) {
        const unsigned short* const* m = ldmatrix_rows + base + 8 * j;
        unsigned lo, hi;
        if (TRANS) {
            lo = m[2 * (lane % 4)][lane / 4];
            hi = m[2 * (lane % 4) + 1][lane / 4];
        } else {
            lo = m[lane / 4][2 * (lane % 4)];
            hi = m[lane / 4][2 * (lane % 4) + 1];
        }
        r[j] = lo | hi << 16;
    }
    warp_meet();
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

// The order of the blocks and their threads in the next launches: -1 as
// PTUNING_EMU_ORDER says (reverse, else in order), 0 in order, 1 reversed.
inline int thread_order = -1;

inline bool reverse_by_env() {
    const char* order = std::getenv("PTUNING_EMU_ORDER");
    return order != nullptr && std::strcmp(order, "reverse") == 0;
}

// Runs kernel(args...) over grid × block (block.y = block.z = 1), the
// blocks one after another on this thread.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), Dim3 grid, unsigned block, A... args) {
    gridDim = grid;
    blockDim = Dim3{block, 1, 1};
    bool reverse = thread_order >= 0 ? thread_order == 1 : reverse_by_env();
    auto call = [&] { kernel(as_param<P>(args)...); };
    emu::body = [](void* f) { (*static_cast<decltype(call)*>(f))(); };
    emu::body_arg = &call;
    // Reversed, the blocks run last to first too: two blocks writing the
    // same element, or one reading what another writes, give other results.
    std::size_t blocks = (std::size_t)grid.x * grid.y * grid.z;
    for (std::size_t n = 0; n < blocks; n++) {
        std::size_t at = reverse ? blocks - 1 - n : n;
        blockIdx = Dim3{unsigned(at % grid.x), unsigned(at / grid.x % grid.y), unsigned(at / grid.x / grid.y)};
        prepare_shared();
        emu::run_block(block, reverse);
        check_copies(block);
        check_shared();
    }
}
