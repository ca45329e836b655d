//! kernels.cu compiled with NVRTC for one head size and architecture, and
//! kept in the kernel cache (engine/cuda/kernel_cache.rs): a device open
//! reads the PTX from there, and only a new source, head size, architecture
//! or NVRTC compiles again. Needs libnvrtc, not a GPU.

use std::path::Path;

use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::engine::cuda::device::driver_err;
use crate::engine::cuda::{kernel_cache, kernels};
use crate::error::{Error, Result};

/// Whether NVRTC alone can be loaded (enough to compile the kernels, no GPU
/// needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn nvrtc_missing() -> Error {
    Error::Cuda(
        "libnvrtc.so.13 (NVRTC) cannot be loaded; install the CUDA 13 toolkit or put its lib folder on LD_LIBRARY_PATH".into(),
    )
}

/// Compiles the kernels for `head_dim` (and `arch`, e.g. "sm_90", when
/// given) with NVRTC. Needs libnvrtc, not a GPU.
pub fn compile_kernels(head_dim: usize, arch: Option<String>) -> Result<Ptx> {
    check_head_dim(head_dim)?;
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    let mut options = vec![format!("-DHEAD_DIM={head_dim}")];
    if let Some(a) = arch {
        options.push(format!("--gpu-architecture={a}"));
    }
    let opts = CompileOptions {
        options,
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernels::source(), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::Cuda(format!(
            "NVRTC could not compile the kernels:\n{}",
            log.to_string_lossy()
        )),
        other => driver_err("NVRTC", other),
    })
}

/// The kernels' PTX for `head_dim` and `arch` (e.g. "sm_90"): from the
/// kernel cache in `dir` when it has them, else compiled with NVRTC and
/// stored there. Returns the PTX and whether it came from `dir`.
pub fn cached_kernels(head_dim: usize, arch: &str, dir: Option<&Path>) -> Result<(String, bool)> {
    let key = kernels_key(head_dim, arch)?;
    kernel_cache::ptx(dir, &key, || {
        compile_kernels(head_dim, Some(arch.to_string())).map(|p| p.to_src())
    })
}

/// What the kernels' PTX depends on, as the kernel cache's key: the source,
/// the head size, the architecture and NVRTC's version.
pub fn kernels_key(head_dim: usize, arch: &str) -> Result<String> {
    check_head_dim(head_dim)?;
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (the device checked its libraries); the
    // function writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(driver_err("reading NVRTC's version", status));
    }
    Ok(format!(
        "kernels.cu {:016x}, HEAD_DIM {head_dim}, {arch}, NVRTC {major}.{minor}",
        kernel_cache::fnv1a64(&[kernels::source().as_bytes()])
    ))
}

/// The attention kernels move heads in 4-float vectors.
pub fn check_head_dim(head_dim: usize) -> Result<()> {
    if head_dim == 0 || !head_dim.is_multiple_of(4) {
        return Err(Error::Cuda(format!(
            "the attention kernels need a head size that is a multiple of 4, this model's is {head_dim}; use --device cpu"
        )));
    }
    Ok(())
}
