//! One CUDA device: its context and stream, cuBLAS, and our kernels compiled
//! with NVRTC for its architecture. Everything is loaded at run time
//! (cudarc's dynamic loading), so a machine without CUDA builds and runs the
//! binary and only `--device cuda` fails, saying which library is missing.

use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::driver::{DeviceRepr, PushKernelArg, ValidAsZeroBits};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{Error, Result};

/// The kernels' source; `HEAD_DIM` is defined at compile time.
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// Arithmetic of the GEMMs. Everything else (LayerNorm, softmax, GELU, the
/// prefix, the head, the optimizer) is f32 whatever the precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 GEMMs (CUBLAS_COMPUTE_32F).
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

/// Whether NVRTC alone can be loaded (enough to compile the kernels, no GPU
/// needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::InvalidArgument(format!("CUDA: {what}: {e:?}"))
}

/// Compiles the kernels for `head_dim` (and `arch`, e.g. "sm_90", when
/// given) with NVRTC. Needs libnvrtc, not a GPU.
pub fn compile_kernels(head_dim: usize, arch: Option<String>) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(Error::InvalidArgument(
            "CUDA: libnvrtc.so.13 (NVRTC) cannot be loaded; install the CUDA 13 toolkit or put its lib folder on LD_LIBRARY_PATH".into(),
        ));
    }
    let mut options = vec![format!("-DHEAD_DIM={head_dim}")];
    if let Some(a) = arch {
        options.push(format!("--gpu-architecture={a}"));
    }
    let opts = CompileOptions {
        options,
        name: Some("ptuning_kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS_CU, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::InvalidArgument(format!(
            "CUDA: NVRTC could not compile the kernels:\n{}",
            log.to_string_lossy()
        )),
        other => driver_err("NVRTC", other),
    })
}

/// A device buffer and its raw address. Kernels get raw addresses: one
/// stream, no event tracking, and buffers owned by whoever launches.
pub struct DevBuf<T> {
    slice: Option<CudaSlice<T>>,
    pub ptr: u64,
    pub len: usize,
}

impl<T> Default for DevBuf<T> {
    fn default() -> Self {
        DevBuf {
            slice: None,
            ptr: 0,
            len: 0,
        }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Default + Clone> DevBuf<T> {
    /// Makes room for `len` elements (contents undefined when it grows).
    pub fn ensure(&mut self, dev: &CudaDevice, len: usize) -> Result<()> {
        let cap = self.slice.as_ref().map_or(0, |s| s.len());
        if cap < len || self.slice.is_none() {
            let s = dev
                .stream
                .alloc_zeros::<T>(len.max(1))
                .map_err(|e| driver_err("allocating device memory", e))?;
            self.ptr = raw_ptr(&s, &dev.stream);
            self.slice = Some(s);
        }
        self.len = len;
        Ok(())
    }

    /// Copies `data` into the buffer (resized to it).
    pub fn upload(&mut self, dev: &CudaDevice, data: &[T]) -> Result<()> {
        self.ensure(dev, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let slice = self.slice.as_mut().expect("ensured");
        let mut view = slice.slice_mut(..data.len());
        dev.stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| driver_err("copying to the device", e))
    }

    /// The first `n` elements back on the host (waits for the stream).
    pub fn download(&self, dev: &CudaDevice, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        let slice = self
            .slice
            .as_ref()
            .expect("a downloaded buffer was allocated");
        let view = slice.slice(..n);
        dev.stream
            .memcpy_dtoh(&view, &mut out)
            .map_err(|e| driver_err("copying from the device", e))?;
        dev.sync()?;
        Ok(out)
    }

    /// Sets the first `len` elements to zero.
    pub fn zero(&mut self, dev: &CudaDevice) -> Result<()> {
        if let Some(s) = self.slice.as_mut() {
            let mut view = s.slice_mut(..self.len.max(1).min(s.len()));
            dev.stream
                .memset_zeros(&mut view)
                .map_err(|e| driver_err("zeroing device memory", e))?;
        }
        Ok(())
    }
}

fn raw_ptr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// The kernels of kernels.cu, by name.
pub struct Kernels {
    pub dropout_apply: CudaFunction,
    pub dropout_copy: CudaFunction,
    pub embed_layernorm: CudaFunction,
    pub bias_dropout_residual_layernorm: CudaFunction,
    pub layernorm_backward: CudaFunction,
    pub bias_gelu: CudaFunction,
    pub gelu_backward: CudaFunction,
    pub attention_forward: CudaFunction,
    pub attention_delta: CudaFunction,
    pub attention_backward_dq: CudaFunction,
    pub attention_backward_dkv: CudaFunction,
    pub expand_prefix: CudaFunction,
    pub reduce_prefix: CudaFunction,
    pub gather_rows: CudaFunction,
    pub scatter_rows: CudaFunction,
    pub broadcast_rows: CudaFunction,
    pub to_bf16: CudaFunction,
}

/// An open GPU with our kernels loaded for one head dimension.
pub struct CudaDevice {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    pub kernels: Kernels,
    /// e.g. "NVIDIA H200"
    pub name: String,
    pub compute_capability: (i32, i32),
    pub head_dim: usize,
}

// SAFETY: the context, stream, cuBLAS handle and functions are used from one
// thread at a time (the engine takes &mut for every launch sequence).
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal` and compiles the kernels for `head_dim`. Fails with
    /// a clear message when a library is missing, no GPU is present, or the
    /// ordinal is out of range.
    pub fn open(ordinal: usize, head_dim: usize) -> Result<Self> {
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "CUDA is not usable here: cannot load {}; install the NVIDIA driver and the CUDA 13 toolkit (or put its lib folder on LD_LIBRARY_PATH), or use --device cpu",
                missing.join(", ")
            )));
        }
        let count = CudaContext::device_count().map_err(|e| driver_err("counting GPUs", e))?;
        if count <= 0 {
            return Err(Error::InvalidArgument(
                "CUDA: the driver sees no GPU; use --device cpu".into(),
            ));
        }
        if ordinal >= count as usize {
            return Err(Error::InvalidArgument(format!(
                "CUDA: no GPU cuda:{ordinal}; this machine has {count} (cuda:0 to cuda:{})",
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
        let ptx = compile_kernels(head_dim, Some(format!("sm_{}{}", cc.0, cc.1)))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| driver_err("loading the kernels", e))?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| driver_err(&format!("kernel {n}"), e))
        };
        let kernels = Kernels {
            dropout_apply: f("dropout_apply")?,
            dropout_copy: f("dropout_copy")?,
            embed_layernorm: f("embed_layernorm")?,
            bias_dropout_residual_layernorm: f("bias_dropout_residual_layernorm")?,
            layernorm_backward: f("layernorm_backward")?,
            bias_gelu: f("bias_gelu")?,
            gelu_backward: f("gelu_backward")?,
            attention_forward: f("attention_forward")?,
            attention_delta: f("attention_delta")?,
            attention_backward_dq: f("attention_backward_dq")?,
            attention_backward_dkv: f("attention_backward_dkv")?,
            expand_prefix: f("expand_prefix")?,
            reduce_prefix: f("reduce_prefix")?,
            gather_rows: f("gather_rows")?,
            scatter_rows: f("scatter_rows")?,
            broadcast_rows: f("broadcast_rows")?,
            to_bf16: f("to_bf16")?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(|e| driver_err("starting cuBLAS", e))?;
        Ok(CudaDevice {
            ctx,
            stream,
            blas,
            kernels,
            name,
            compute_capability: cc,
            head_dim,
        })
    }

    /// Waits for everything queued.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("running the kernels", e))
    }

    /// Launches `f` with `args` pushed in order (raw pointers as u64).
    pub fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument lists match kernels.cu's signatures (checked by
        // the GPU golden tests), and every pointer is a live DevBuf.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| driver_err("launching a kernel", e))
    }

    /// A grid-stride launch over `n` elements.
    pub fn launch_1d(&self, f: &CudaFunction, n: usize, args: &[&dyn KernelArg]) -> Result<()> {
        let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
        self.launch(f, (blocks, 1, 1), 256, args)
    }

    /// y[rows, out] (+)= x[rows, in] · Wᵀ with W [out, in] row-major, in
    /// `precision`; `x_bf16` is scratch for the bf16 copy of x.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        precision: Precision,
        x: u64,
        x_bf16: &mut DevBuf<u16>,
        w: u64,
        rows: usize,
        out: usize,
        inp: usize,
        y: u64,
        accumulate: bool,
    ) -> Result<()> {
        // Column-major: Yᶜ[out, rows] = op(Wᶜ = Wᵀ[in, out])ᵀ · Xᶜ[in, rows].
        self.gemm(
            precision,
            (true, false),
            (out, rows, inp),
            (w, inp),
            (x, inp),
            x_bf16,
            (y, out),
            accumulate,
        )
    }

    /// dx[rows, in] (+)= dy[rows, out] · W with W [out, in] row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_input(
        &self,
        precision: Precision,
        dy: u64,
        dy_bf16: &mut DevBuf<u16>,
        w: u64,
        rows: usize,
        out: usize,
        inp: usize,
        dx: u64,
        accumulate: bool,
    ) -> Result<()> {
        // Column-major: dXᶜ[in, rows] = Wᶜ[in, out] · dYᶜ[out, rows].
        self.gemm(
            precision,
            (false, false),
            (inp, rows, out),
            (w, inp),
            (dy, out),
            dy_bf16,
            (dx, inp),
            accumulate,
        )
    }

    /// C = op(A)·B (+ C) in column-major terms, A the weight (bf16 when
    /// `precision` is bf16), B an f32 activation converted into `b_bf16` for
    /// bf16, C f32.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        precision: Precision,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        b_bf16: &mut DevBuf<u16>,
        (c, ldc): (u64, usize),
        accumulate: bool,
    ) -> Result<()> {
        use blas_sys::cublasComputeType_t as Compute;
        use blas_sys::cudaDataType_t as Ty;
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (b_ptr, ab_type, compute) = match precision {
            Precision::Fp32 => (b, Ty::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F),
            Precision::Tf32 => (b, Ty::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F_FAST_TF32),
            Precision::Bf16 => {
                let len = k * n;
                b_bf16.ensure(self, len)?;
                self.launch_1d(
                    &self.kernels.to_bf16,
                    len,
                    &[&b, &b_bf16.ptr, &(len as u64)],
                )?;
                (b_bf16.ptr, Ty::CUDA_R_16BF, Compute::CUBLAS_COMPUTE_32F)
            }
        };
        let alpha = 1.0f32;
        let beta = if accumulate { 1.0f32 } else { 0.0f32 };
        // SAFETY: pointers are live device buffers of at least the sizes the
        // leading dimensions and m, n, k describe; alpha/beta are host f32.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                a as *const std::ffi::c_void,
                ab_type,
                lda as i32,
                b_ptr as *const std::ffi::c_void,
                ab_type,
                ldb as i32,
                &beta as *const f32 as *const _,
                c as *mut std::ffi::c_void,
                Ty::CUDA_R_32F,
                ldc as i32,
                compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| driver_err("cuBLAS GEMM", e))
    }
}

/// A kernel argument: a scalar or a raw device address, by reference.
pub trait KernelArg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

macro_rules! kernel_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
kernel_arg!(u64, i32, u32, f32);
