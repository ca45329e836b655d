//! One CUDA device: its context and stream, cuBLAS, and our kernels loaded
//! for its architecture (compiled by engine/cuda/nvrtc.rs); the launches,
//! the GEMMs and their profile. Its buffers are engine/cuda/memory.rs's.
//! Everything is loaded at run time (cudarc's dynamic loading), so a machine
//! without CUDA builds and runs the binary and only `--device cuda` fails,
//! saying which library is missing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cuda::kernel_cache;
use crate::engine::cuda::kernels::{Kernel, MmaFormat, ROW_BLOCK};
use crate::engine::cuda::memory::{DevBuf, Footprint, MemoryUse};
use crate::engine::cuda::nvrtc::{cached_kernels, check_head_dim, kernels_key};
use crate::engine::cuda::tf32x3::Fp32Gemm;
use crate::error::{Error, Result};

/// Arithmetic of the GEMMs. Everything else (LayerNorm, softmax, GELU, the
/// prefix, the head, the optimizer) is f32 whatever the precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 GEMMs at f32 accuracy: 3xTF32 on the tensor cores where the
    /// device has them, else cuBLAS SGEMM ([`Fp32Gemm`]).
    Fp32,
    /// f32 storage, TF32 tensor-core GEMMs (CUBLAS_COMPUTE_32F_FAST_TF32).
    Tf32,
    /// Frozen weights held in bf16, activations rounded to bf16 at each GEMM's
    /// input, f32 accumulation and output.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::InvalidArgument(format!(
                "unknown precision {other:?}; expected fp32, tf32 or bf16"
            ))),
        }
    }
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Chooses where bf16 inference's attention reads its operands: `qkv` (the
/// default: the QKV GEMM's output) or `operands` (attention_operands' copy,
/// as training does), to time one against the other on a card.
pub const BF16_ATTENTION_ENV: &str = "PTUNING_BF16_ATTENTION";

/// [`CudaDevice::attention_from_qkv`] as [`BF16_ATTENTION_ENV`] sets it.
fn bf16_attention_from_env() -> Result<bool> {
    bf16_attention_from_qkv(std::env::var(BF16_ATTENTION_ENV).ok().as_deref())
}

/// [`CudaDevice::attention_from_qkv`] from the value of
/// [`BF16_ATTENTION_ENV`] (None: unset); an unknown value is an error.
pub fn bf16_attention_from_qkv(value: Option<&str>) -> Result<bool> {
    match value.unwrap_or("") {
        "" | "qkv" => Ok(true),
        "operands" => Ok(false),
        other => Err(Error::InvalidArgument(format!(
            "{BF16_ATTENTION_ENV}={other:?}: expected qkv or operands"
        ))),
    }
}

/// Which CUDA libraries cannot be loaded here (empty: all can). Never panics,
/// unlike a first call into a missing library.
pub fn missing_libraries() -> Vec<&'static str> {
    let mut missing = Vec::new();
    // SAFETY: each check only tries to dlopen the library's candidate names.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("libcuda (the NVIDIA driver)");
        }
        if !cudarc::cublas::sys::is_culib_present() {
            missing.push("libcublas.so.13 (cuBLAS)");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            missing.push("libnvrtc.so.13 (NVRTC)");
        }
    }
    missing
}

/// `PTUNING_CUDA_EMULATOR=1` makes GPU 0 the CPU emulation of the kernels
/// ([`CudaDevice::emulated`]: tools/cuda_emu, built with g++), so that the
/// CLI's whole CUDA path (train, eval, predict, serve, bench with `--device
/// cuda` or auto) runs without a GPU, slowly. For tests.
pub const EMULATOR_ENV: &str = "PTUNING_CUDA_EMULATOR";

/// Whether [`EMULATOR_ENV`] asks for the emulation.
pub fn emulator_requested() -> bool {
    std::env::var_os(EMULATOR_ENV).is_some_and(|v| v == "1")
}

/// A CUDA call's failure as our error: what was being done, and the code.
pub(crate) fn driver_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// (key, threshold, scale, enabled) of a dropout site, as the kernels take
/// it (src/engine/cpu/dropout.rs's mask).
pub fn dropout_site(d: Option<Dropout>) -> (u64, u64, f32, i32) {
    match d {
        Some(d) => {
            let m = d.mask();
            (m.key(), m.threshold(), m.scale(), 1)
        }
        None => (0, 0, 1.0, 0),
    }
}

/// How a device runs: a real GPU, or kernels.cu on the CPU through
/// tools/cuda_emu (tests of the engine on machines without a GPU).
pub(crate) enum Backend {
    Cuda {
        // Kept alive for the stream, module and cuBLAS handle.
        _ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        blas: CudaBlas,
        /// Indexed by `Kernel as usize`; None where not built for the
        /// head size ([`Kernel::built_for`]).
        functions: Vec<Option<CudaFunction>>,
    },
    Emulated(super::emulator::Emulator),
}

/// An open GPU (or its emulation) with our kernels loaded for one head
/// dimension.
pub struct CudaDevice {
    pub(crate) backend: Backend,
    /// e.g. "NVIDIA H200"
    pub name: String,
    pub compute_capability: (i32, i32),
    pub head_dim: usize,
    /// The formats whose attention runs on the tensor cores: the head size
    /// is a multiple of the format's k, the kernels' shared memory fits, and
    /// the format's self-test found the fragment layout they assume.
    pub tensor_cores: Vec<MmaFormat>,
    /// How fp32 GEMMs and attention run here: SGEMM and the f32 attention
    /// kernels, or 3xTF32 on the tensor cores.
    pub fp32_gemm: Fp32Gemm,
    /// Whether bf16 attention reads q, k and v from the QKV GEMM's output
    /// where no backward reads its operands (attention_forward_qkv_bf16),
    /// or always attention_operands' copy ([`bf16_attention_from_qkv`]).
    pub attention_from_qkv: bool,
    /// Spans of the launches since `start_profile`, when profiling.
    profile: Mutex<Option<Vec<Span>>>,
    /// [`CudaDevice::scratch`]: 3xTF32's split activations.
    scratch: Mutex<DevBuf<f32>>,
    pub(crate) footprint: Arc<Footprint>,
}

/// One profiled launch: device events around it on a GPU, the host's clock
/// around the (synchronous) emulated launch.
struct Span {
    name: String,
    time: SpanTime,
}

enum SpanTime {
    Events(CudaEvent, CudaEvent),
    Host(f64),
}

/// The time of one kernel (or GEMM shape) over a profiled stretch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelTime {
    pub name: String,
    pub launches: usize,
    pub ms: f64,
}

// SAFETY: the context, stream, cuBLAS handle and functions are used from one
// thread at a time (the engine takes &mut for every launch sequence).
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal` and compiles the kernels for `head_dim`. Fails with
    /// a clear message when a library is missing, no GPU is present, or the
    /// ordinal is out of range. With [`EMULATOR_ENV`], GPU 0 is the
    /// emulation.
    pub fn open(ordinal: usize, head_dim: usize) -> Result<Self> {
        if emulator_requested() {
            if ordinal != 0 {
                return Err(Error::Cuda(format!(
                    "no GPU cuda:{ordinal}; {EMULATOR_ENV}=1 emulates cuda:0 only"
                )));
            }
            return Self::emulated(head_dim);
        }
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(Error::Cuda(format!(
                "not usable here: cannot load {}; install the NVIDIA driver and the CUDA 13 toolkit (or put its lib folder on LD_LIBRARY_PATH), or use --device cpu",
                missing.join(", ")
            )));
        }
        let count = CudaContext::device_count().map_err(|e| driver_err("counting GPUs", e))?;
        if count <= 0 {
            return Err(Error::Cuda(
                "the driver sees no GPU; use --device cpu".into(),
            ));
        }
        if ordinal >= count as usize {
            return Err(Error::Cuda(format!(
                "no GPU cuda:{ordinal}; this machine has {count} (cuda:0 to cuda:{})",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating a context", e))?;
        // One stream, raw pointers: no per-launch event bookkeeping.
        // SAFETY: every buffer is used on the one default stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = ctx.name().map_err(|e| driver_err("reading the name", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| driver_err("reading the compute capability", e))?;
        // The PTX from the kernel cache, else NVRTC (seconds) and stored.
        let arch = format!("sm_{}{}", cc.0, cc.1);
        let cache = kernel_cache::default_dir();
        let (ptx, cached) = cached_kernels(head_dim, &arch, cache.as_deref())?;
        let module = match ctx.load_module(Ptx::from_src(ptx)) {
            Ok(module) => module,
            Err(_) if cached => {
                // A stored PTX the driver refuses: compile it anew.
                kernel_cache::forget(cache.as_deref(), &kernels_key(head_dim, &arch)?);
                let (ptx, _) = cached_kernels(head_dim, &arch, cache.as_deref())?;
                ctx.load_module(Ptx::from_src(ptx))
                    .map_err(|e| driver_err("loading the kernels", e))?
            }
            Err(e) => return Err(driver_err("loading the kernels", e)),
        };
        let functions = Kernel::ALL
            .iter()
            .map(|k| {
                k.built_for(head_dim)
                    .then(|| {
                        module
                            .load_function(k.name())
                            .map_err(|e| driver_err(&format!("kernel {}", k.name()), e))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        // Past 48 KB of shared memory a kernel must ask for it, up to the
        // block's limit. The f32 kernels must fit; a tensor-core format
        // whose kernels do not is left off (with_tensor_cores).
        let max_shared = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_err("reading the shared memory per block", e))?
            as u32;
        for (k, f) in Kernel::ALL.iter().zip(&functions) {
            let bytes = k.shared_bytes(head_dim);
            let tensor_cores = MmaFormat::ALL.iter().any(|m| m.kernels().contains(k));
            if let (Some(f), true) = (
                f,
                bytes > 48 * 1024 && !(tensor_cores && bytes > max_shared),
            ) {
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|e| {
                    driver_err(
                        &format!("{} with {bytes} bytes of shared memory (head size {head_dim})", k.name()),
                        e,
                    )
                })?;
            }
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| driver_err("starting cuBLAS", e))?;
        CudaDevice {
            backend: Backend::Cuda {
                _ctx: ctx,
                stream,
                blas,
                functions,
            },
            name,
            compute_capability: cc,
            head_dim,
            tensor_cores: Vec::new(),
            fp32_gemm: Fp32Gemm::choose(cc >= (8, 0))?,
            attention_from_qkv: bf16_attention_from_env()?,
            profile: Mutex::new(None),
            scratch: Mutex::new(DevBuf::default()),
            footprint: Arc::default(),
        }
        .with_tensor_cores(cc >= (8, 0), max_shared)
    }

    /// The kernels run on the CPU through tools/cuda_emu (built with g++ on
    /// first use), with plain-loop GEMMs: every launch, pointer and GEMM of
    /// the engine is exercised without a GPU. Slow; for tests.
    pub fn emulated(head_dim: usize) -> Result<Self> {
        check_head_dim(head_dim)?;
        CudaDevice {
            backend: Backend::Emulated(super::emulator::Emulator::load(head_dim)?),
            name: "CPU emulation of the CUDA kernels".into(),
            compute_capability: (0, 0),
            head_dim,
            tensor_cores: Vec::new(),
            fp32_gemm: Fp32Gemm::choose(true)?,
            attention_from_qkv: bf16_attention_from_env()?,
            profile: Mutex::new(None),
            scratch: Mutex::new(DevBuf::default()),
            footprint: Arc::default(),
        }
        .with_tensor_cores(true, u32::MAX)
    }

    /// The emulated device's blocks, and the threads of each, in reverse
    /// order from now on (false: in order), for race checks
    /// ([`super::emulator::Emulator::reverse_threads`]);
    /// an error on a GPU.
    pub fn reverse_emulated_threads(&self, reverse: bool) -> Result<()> {
        match &self.backend {
            Backend::Emulated(emu) => {
                emu.reverse_threads(reverse);
                Ok(())
            }
            Backend::Cuda { .. } => Err(Error::InvalidArgument(
                "the order of the threads is the GPU's, not ours".into(),
            )),
        }
    }

    /// Enables the tensor-core attention of each format when `supported`
    /// (mma.sync needs compute capability 8.0), the kernels are built for
    /// the head size, their shared memory fits in `max_shared` bytes, and
    /// the format's self-test passes; otherwise that precision runs the f32
    /// attention kernels.
    fn with_tensor_cores(mut self, supported: bool, max_shared: u32) -> Result<Self> {
        for format in MmaFormat::ALL {
            let kernels = format.kernels();
            if !supported || !kernels[0].built_for(self.head_dim) {
                continue;
            }
            let shared = kernels
                .iter()
                .map(|k| k.shared_bytes(self.head_dim))
                .max()
                .unwrap_or(0);
            if shared > max_shared {
                tracing::info!(
                    "{}: {} attention stays on the f32 kernels: its tensor-core kernels need {shared} bytes of shared memory per block at head size {}, the device has {max_shared}",
                    self.name,
                    format.as_str(),
                    self.head_dim
                );
            } else if self.mma_self_test(format)? {
                self.tensor_cores.push(format);
            } else {
                tracing::warn!(
                    "{}: the {} tensor-core attention's self-test failed; that precision's attention stays on the f32 kernels",
                    self.name,
                    format.as_str()
                );
            }
        }
        Ok(self)
    }

    /// The tensor-core format attention in `precision` runs in on this
    /// device, if any (else the f32 kernels).
    pub fn attention_format(&self, precision: Precision) -> Option<MmaFormat> {
        MmaFormat::of(precision, self.fp32_gemm).filter(|f| self.tensor_cores.contains(f))
    }

    /// One warp's products of small integers in `format` (attention_mma.cuh,
    /// mma_self_test: S = A·Bᵀ [16, 16] and O = W·B [16, HD], by the tile
    /// loads and mma loops the kernels use) against the same products here:
    /// whether the fragment layouts those kernels assume are this device's.
    pub fn mma_self_test(&self, format: MmaFormat) -> Result<bool> {
        let hd = self.head_dim as i32;
        let a = |r: i32, k: i32| (r + 2 * k) % 7 - 3;
        let b = |j: i32, k: i32| (3 * k + j) % 5 - 2;
        let w = |r: i32, j: i32| (r + 3 * j) % 5 - 2;
        let s_len = 16 * 16;
        let mut out = DevBuf::<f32>::default();
        out.ensure(self, s_len + 16 * self.head_dim)?;
        self.launch(format.kernels()[0], (1, 1, 1), 32, &[&out.ptr])?;
        let got = out.download(self, s_len + 16 * self.head_dim)?;
        let (s, o) = got.split_at(s_len);
        Ok((0..16).all(|r| {
            let s_row = (0..16).all(|j| {
                let want: i32 = (0..hd).map(|k| a(r, k) * b(j, k)).sum();
                s[(r * 16 + j) as usize] == want as f32
            });
            let o_row = (0..hd).all(|c| {
                let want: i32 = (0..16).map(|j| w(r, j) * b(j, c)).sum();
                o[(r * hd + c) as usize] == want as f32
            });
            s_row && o_row
        }))
    }

    /// Waits for everything queued.
    pub fn sync(&self) -> Result<()> {
        match &self.backend {
            Backend::Cuda { stream, .. } => stream
                .synchronize()
                .map_err(|e| driver_err("running the kernels", e)),
            Backend::Emulated(_) => Ok(()),
        }
    }

    /// Starts timing every launch and GEMM (and forgets earlier spans). Adds
    /// an event pair per launch: for `bench --profile`, not for production.
    pub fn start_profile(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Stops timing; returns the time of each kernel name (GEMMs by shape)
    /// since `start_profile`, longest first. Waits for the device.
    pub fn take_profile(&self) -> Result<Vec<KernelTime>> {
        self.sync()?;
        let spans = self
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let mut times: Vec<KernelTime> = Vec::new();
        for span in spans {
            let ms = match &span.time {
                SpanTime::Events(a, b) => {
                    a.elapsed_ms(b)
                        .map_err(|e| driver_err("reading an event", e))? as f64
                }
                SpanTime::Host(ms) => *ms,
            };
            match times.iter_mut().find(|t| t.name == span.name) {
                Some(t) => {
                    t.launches += 1;
                    t.ms += ms;
                }
                None => times.push(KernelTime {
                    name: span.name,
                    launches: 1,
                    ms,
                }),
            }
        }
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }

    /// Runs `f` (one launch or GEMM), timed as `name()` when profiling.
    fn timed(&self, name: impl FnOnce() -> String, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut profile = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let Some(spans) = profile.as_mut() else {
            drop(profile);
            return f();
        };
        let time = match &self.backend {
            Backend::Cuda { stream, .. } => {
                let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                let record = |s: &CudaStream| {
                    s.record_event(flags)
                        .map_err(|e| driver_err("recording an event", e))
                };
                let start = record(stream)?;
                f()?;
                SpanTime::Events(start, record(stream)?)
            }
            Backend::Emulated(_) => {
                let start = Instant::now();
                f()?;
                SpanTime::Host(start.elapsed().as_secs_f64() * 1e3)
            }
        };
        spans.push(Span { name: name(), time });
        Ok(())
    }

    /// Bytes held by this device's buffers, now and at most.
    pub fn memory(&self) -> MemoryUse {
        self.footprint.usage()
    }

    /// Starts the peak of [`CudaDevice::memory`] again from what is held now.
    pub fn reset_peak(&self) {
        self.footprint.reset_peak();
    }

    /// The address of a device buffer of at least `len` f32, valid until
    /// the next call (the launches queued before a call that grows it have
    /// their memory freed in stream order).
    pub fn scratch(&self, len: usize) -> Result<u64> {
        let mut buf = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        buf.ensure(self, len)?;
        Ok(buf.ptr)
    }

    /// Launches `kernel` with `args` in order (raw pointers as u64).
    pub fn launch(
        &self,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: u32,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        self.timed(
            || kernel.name().to_string(),
            || self.launch_now(kernel, grid, block, args),
        )
    }

    fn launch_now(
        &self,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: u32,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        match &self.backend {
            Backend::Cuda {
                stream, functions, ..
            } => {
                let f = functions[kernel as usize].as_ref().ok_or_else(|| {
                    Error::Cuda(format!(
                        "kernel {} is not built for head size {}",
                        kernel.name(),
                        self.head_dim
                    ))
                })?;
                let mut b = stream.launch_builder(f);
                for a in args {
                    a.push(&mut b);
                }
                let cfg = LaunchConfig {
                    grid_dim: grid,
                    block_dim: (block, 1, 1),
                    shared_mem_bytes: kernel.shared_bytes(self.head_dim),
                };
                // SAFETY: the argument lists match kernels.cu's signatures
                // (checked by the emulated engine tests), and every pointer is
                // a live DevBuf.
                unsafe { b.launch(cfg) }
                    .map(|_| ())
                    .map_err(|e| driver_err(&format!("launching {}", kernel.name()), e))
            }
            Backend::Emulated(emu) => {
                let slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
                emu.launch(
                    kernel.name(),
                    (grid, block),
                    &slots,
                    kernel.shared_bytes(self.head_dim),
                )
            }
        }
    }

    /// A grid-stride launch over `n` elements.
    pub fn launch_1d(&self, kernel: Kernel, n: usize, args: &[&dyn KernelArg]) -> Result<()> {
        let block = ROW_BLOCK;
        let blocks = n.div_ceil(block as usize).clamp(1, 65535) as u32;
        self.launch(kernel, (blocks, 1, 1), block, args)
    }

    /// y[rows, out] (+)= x[rows, in] · Wᵀ with W [out, in] row-major, in
    /// `precision`: x is f32 in fp32 and tf32, bf16 (as the kernel that
    /// produced it wrote it) in bf16. A split W is fp32 by 3xTF32.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        precision: Precision,
        x: u64,
        w: impl Into<Operand>,
        rows: usize,
        out: usize,
        inp: usize,
        y: GemmOut,
        accumulate: bool,
    ) -> Result<()> {
        // Column-major: Yᶜ[out, rows] = op(Wᶜ = Wᵀ[in, out])ᵀ · Xᶜ[in, rows].
        self.products(
            precision,
            (x, rows * inp),
            w.into(),
            accumulate,
            |p, x, w, acc| {
                let (a, b) = ((w, inp), (x, inp));
                self.gemm(p, (true, false), (out, rows, inp), a, b, (y, out), acc)
            },
        )
    }

    /// dx[rows, in] (+)= dy[rows, out] · W with W [out, in] row-major; dy
    /// f32, or bf16 in bf16, as for `linear`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_input(
        &self,
        precision: Precision,
        dy: u64,
        w: impl Into<Operand>,
        rows: usize,
        out: usize,
        inp: usize,
        dx: GemmOut,
        accumulate: bool,
    ) -> Result<()> {
        // Column-major: dXᶜ[in, rows] = Wᶜ[in, out] · dYᶜ[out, rows].
        self.products(
            precision,
            (dy, rows * out),
            w.into(),
            accumulate,
            |p, dy, w, acc| {
                let (a, b) = ((w, inp), (dy, out));
                self.gemm(p, (false, false), (inp, rows, out), a, b, (dx, inp), acc)
            },
        )
    }

    /// dW[out, in] (+)= dyᵀ · x with dy [rows, out] and x [rows, in], all
    /// f32 (a trainable weight's gradient: the head's classifier).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_weight(
        &self,
        dy: u64,
        x: u64,
        rows: usize,
        out: usize,
        inp: usize,
        dw: u64,
        accumulate: bool,
    ) -> Result<()> {
        // Column-major: dWᶜ[in, out] = Xᶜ[in, rows] · (dYᶜ[out, rows])ᵀ.
        self.gemm(
            Precision::Fp32,
            (false, true),
            (inp, out, rows),
            (x, inp),
            (dy, out),
            (GemmOut::F32(dw), inp),
            accumulate,
        )
    }

    /// C = op(A)·B (+ C) in column-major terms, A the weight and B the
    /// activation (both bf16 when `precision` is bf16, else f32), C as
    /// [`GemmOut`] says.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        precision: Precision,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        (c, ldc): (GemmOut, usize),
        accumulate: bool,
    ) -> Result<()> {
        let (c, c_bf16) = match c {
            GemmOut::F32(c) => (c, false),
            GemmOut::Bf16(c) => (c, true),
        };
        if c_bf16 && (accumulate || precision != Precision::Bf16) {
            return Err(Error::Cuda(
                "a bf16 GEMM output needs bf16 inputs and cannot accumulate".into(),
            ));
        }
        use blas_sys::cublasComputeType_t as Compute;
        use blas_sys::cudaDataType_t as Ty;
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (ab_type, compute) = match precision {
            Precision::Fp32 => (Ty::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F),
            Precision::Tf32 => (Ty::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F_FAST_TF32),
            Precision::Bf16 => (Ty::CUDA_R_16BF, Compute::CUBLAS_COMPUTE_32F),
        };
        let name = || {
            let t = |x: bool| if x { 'T' } else { 'N' };
            format!("gemm {} {m}x{n}x{k} {}{}", precision.as_str(), t(ta), t(tb))
        };
        self.timed(name, || {
            let alpha = 1.0f32;
            let beta = if accumulate { 1.0f32 } else { 0.0f32 };
            let blas = match &self.backend {
                Backend::Cuda { blas, .. } => blas,
                Backend::Emulated(_) => {
                    // SAFETY: as for cuBLAS below: live buffers of the described sizes.
                    unsafe {
                        super::emulator::gemm(
                            (ta, tb),
                            (m, n, k),
                            (a, lda),
                            (b, ldb),
                            (c, ldc, c_bf16),
                            precision,
                            beta,
                        )
                    };
                    return Ok(());
                }
            };
            // SAFETY: pointers are live device buffers of at least the sizes the
            // leading dimensions and m, n, k describe; alpha/beta are host f32.
            unsafe {
                blas::gemm_ex(
                    *blas.handle(),
                    op(ta),
                    op(tb),
                    m as i32,
                    n as i32,
                    k as i32,
                    &alpha as *const f32 as *const _,
                    a as *const std::ffi::c_void,
                    ab_type,
                    lda as i32,
                    b as *const std::ffi::c_void,
                    ab_type,
                    ldb as i32,
                    &beta as *const f32 as *const _,
                    c as *mut std::ffi::c_void,
                    if c_bf16 {
                        Ty::CUDA_R_16BF
                    } else {
                        Ty::CUDA_R_32F
                    },
                    ldc as i32,
                    compute,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| driver_err("cuBLAS GEMM", e))
        })
    }
}

/// A GEMM's weight: one matrix (an address), or fp32's two tf32 parts
/// for 3xTF32 (engine/cuda/tf32x3.rs).
#[derive(Clone, Copy, Debug)]
pub enum Operand {
    Plain(u64),
    Split { hi: u64, lo: u64 },
}

impl From<u64> for Operand {
    fn from(w: u64) -> Self {
        Operand::Plain(w)
    }
}

/// Where a GEMM writes its output [rows, out]: in f32, or in bf16 (bf16
/// inputs only, without accumulating) for a kernel that reads it next and
/// adds the bias in f32: half the bytes of the widest activations.
#[derive(Clone, Copy, Debug)]
pub enum GemmOut {
    F32(u64),
    Bf16(u64),
}

/// A kernel argument: a scalar or a raw device address, by reference.
pub trait KernelArg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
    /// As an emulator slot: u64 and addresses as they are, 32-bit integers
    /// zero-extended, f32 by its bits.
    fn slot(&self) -> u64;
}

macro_rules! kernel_arg {
    ($($t:ty => $slot:expr),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
            fn slot(&self) -> u64 {
                let f: fn(&$t) -> u64 = $slot;
                f(self)
            }
        }
    )*};
}
kernel_arg!(u64 => |x| *x, i32 => |x| *x as u32 as u64, u32 => |x| *x as u64, f32 => |x| x.to_bits() as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bf16_attention_variable_chooses_or_is_refused() {
        assert!(bf16_attention_from_qkv(None).unwrap());
        assert!(bf16_attention_from_qkv(Some("")).unwrap());
        assert!(bf16_attention_from_qkv(Some("qkv")).unwrap());
        assert!(!bf16_attention_from_qkv(Some("operands")).unwrap());
        let e = bf16_attention_from_qkv(Some("fused"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(BF16_ATTENTION_ENV) && e.contains("expected qkv or operands"),
            "{e}"
        );
    }
}
