//! The CUDA engine: the CPU engine's kernels again, as CUDA C compiled at run
//! time with NVRTC (kernels/: forward beside backward, the same dropout
//! masks and element numbering), and the GEMMs through cuBLAS in fp32, tf32
//! or bf16. Nothing is linked at build time: cudarc loads libcuda, libcublas
//! and libnvrtc when a device is opened, so the binary builds and runs on
//! machines without CUDA, where only `--device cuda` fails, and says why.
//!
//! - [`kernels`]: the CUDA C, one file per family of kernels, as
//!   engine/cpu/ has one Rust file per family, and the list of its entry
//!   points.
//! - [`device`]: context, stream, cuBLAS, the loaded kernels: launches,
//!   GEMMs, profiles.
//! - [`memory`]: device buffers, and the bytes a device holds.
//! - [`emulator`]: the same kernels run on the CPU (tests without a GPU).
//! - [`nvrtc`]: kernels.cu compiled for a head size and architecture.
//! - [`kernel_cache`]: compiled kernels kept on disk, by a hash of their
//!   inputs (NVRTC takes seconds per device open).
//! - [`encoder`]: the frozen encoder on the GPU (weights uploaded once),
//!   inference and training forward, activation-gradient backward down to
//!   the lowest prefixed layer, as `model::encoder` does on the CPU.
//! - [`head`]: the task head (pooler, dropout, classifier) on the encoder's
//!   output where it lies; only logits and their gradient cross the bus.
//! - [`optim`]: a training run's prefix table, its gradient and AdamW
//!   moments kept on the device.
//! - [`table_cache`]: serving's prefix tables on the device, known by
//!   identity, sent once.
//! - [`tf32x3`]: fp32 GEMMs as three tf32 tensor-core GEMMs of split
//!   operands, at f32 accuracy.

pub mod device;
pub mod emulator;
pub mod encoder;
pub mod head;
pub mod kernel_cache;
pub mod kernels;
pub mod memory;
pub mod nvrtc;
pub mod optim;
pub mod table_cache;
pub mod tf32x3;

pub use device::{
    emulator_requested, missing_libraries, CudaDevice, KernelTime, Precision, EMULATOR_ENV,
};
pub use encoder::CudaEncoder;
pub use nvrtc::{compile_kernels, nvrtc_present};
