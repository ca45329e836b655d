//! Device memory: [`DevBuf`], a buffer on the GPU (or, emulated, in host
//! memory) with its raw address, and the [`Footprint`] every buffer of a
//! device counts its bytes in. Buffers are born in `ensure` and die when
//! dropped; kernels and GEMMs see only their addresses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, DriverError, ValidAsZeroBits};

use crate::engine::cuda::device::{driver_err, Backend, CudaDevice};
use crate::error::{Error, Result};

/// A device buffer and its raw address. Kernels get raw addresses: one
/// stream, no event tracking, and buffers owned by whoever launches.
pub struct DevBuf<T> {
    mem: Mem<T>,
    pub ptr: u64,
    pub len: usize,
    /// The device's count of bytes held, and this buffer's part of it.
    held: Option<(Arc<Footprint>, usize)>,
}

/// The bytes a device's buffers hold (weights, workspaces, a resident
/// prompt): now, and the most since the last [`CudaDevice::reset_peak`].
/// The CUDA context and cuBLAS's own workspace are not counted, as
/// PyTorch's `max_memory_allocated` leaves them out.
#[derive(Debug, Default)]
pub struct Footprint {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Footprint {
    fn add(&self, bytes: usize) {
        let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.now.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn usage(&self) -> MemoryUse {
        MemoryUse {
            now: self.now.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Starts the peak again from what is held now.
    pub fn reset_peak(&self) {
        self.peak
            .store(self.now.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Bytes held by a device's buffers (see [`Footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    pub now: usize,
    pub peak: usize,
}

impl<T> Drop for DevBuf<T> {
    fn drop(&mut self) {
        if let Some((footprint, bytes)) = self.held.take() {
            footprint.sub(bytes);
        }
    }
}

enum Mem<T> {
    None,
    Cuda(CudaSlice<T>),
    /// The emulated device's memory: host memory, 8-byte aligned.
    Host(Vec<u64>),
}

impl<T> Default for DevBuf<T> {
    fn default() -> Self {
        DevBuf {
            mem: Mem::None,
            ptr: 0,
            len: 0,
            held: None,
        }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Default + Clone + Copy> DevBuf<T> {
    fn capacity(&self) -> usize {
        match &self.mem {
            Mem::None => 0,
            Mem::Cuda(s) => s.len(),
            Mem::Host(v) => v.len() * 8 / std::mem::size_of::<T>(),
        }
    }

    /// Makes room for `len` elements (contents undefined when it grows).
    pub fn ensure(&mut self, dev: &CudaDevice, len: usize) -> Result<()> {
        if self.capacity() < len.max(1) {
            // The old block is freed as the new one replaces it.
            if let Some((footprint, bytes)) = self.held.take() {
                footprint.sub(bytes);
            }
            match &dev.backend {
                Backend::Cuda { stream, .. } => {
                    let s = stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
                        allocation_failed(dev, len.max(1) * std::mem::size_of::<T>(), e)
                    })?;
                    self.ptr = {
                        let (p, _sync) = s.device_ptr(stream);
                        p
                    };
                    self.mem = Mem::Cuda(s);
                }
                Backend::Emulated(_) => {
                    // "Undefined" as NaN, in f32 and bf16 alike (and an
                    // index far out of range in u32): a kernel that reads
                    // what nothing wrote shows it, where a GPU's zeros
                    // would hide it.
                    let words = (len.max(1) * std::mem::size_of::<T>()).div_ceil(8);
                    let v = vec![0x7fc0_7fc0_7fc0_7fc0u64; words];
                    self.ptr = v.as_ptr() as u64;
                    self.mem = Mem::Host(v);
                }
            }
            let bytes = len.max(1) * std::mem::size_of::<T>();
            dev.footprint.add(bytes);
            self.held = Some((Arc::clone(&dev.footprint), bytes));
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
        match (&mut self.mem, &dev.backend) {
            (Mem::Cuda(slice), Backend::Cuda { stream, .. }) => {
                let mut view = slice.slice_mut(..data.len());
                stream
                    .memcpy_htod(data, &mut view)
                    .map_err(|e| driver_err("copying to the device", e))
            }
            (Mem::Host(_), Backend::Emulated(_)) => {
                // SAFETY: ensure() sized the host block for data.len() Ts.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr as *mut T, data.len())
                };
                Ok(())
            }
            _ => Err(mixed_devices()),
        }
    }

    /// The first `n` elements back on the host (waits for the device).
    pub fn download(&self, dev: &CudaDevice, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        assert!(
            n <= self.capacity(),
            "download of {n} from a buffer of {}",
            self.capacity()
        );
        match (&self.mem, &dev.backend) {
            (Mem::Cuda(slice), Backend::Cuda { stream, .. }) => {
                let view = slice.slice(..n);
                stream
                    .memcpy_dtoh(&view, &mut out)
                    .map_err(|e| driver_err("copying from the device", e))?;
                dev.sync()?;
            }
            (Mem::Host(_), Backend::Emulated(_)) => {
                // SAFETY: n is within the block (asserted above).
                unsafe { std::ptr::copy_nonoverlapping(self.ptr as *const T, out.as_mut_ptr(), n) };
            }
            _ => return Err(mixed_devices()),
        }
        Ok(out)
    }

    /// Sets the first `len` elements to zero.
    pub fn zero(&mut self, dev: &CudaDevice) -> Result<()> {
        let n = self.len.max(1).min(self.capacity());
        match (&mut self.mem, &dev.backend) {
            (Mem::None, _) => Ok(()),
            (Mem::Cuda(s), Backend::Cuda { stream, .. }) => {
                let mut view = s.slice_mut(..n);
                stream
                    .memset_zeros(&mut view)
                    .map_err(|e| driver_err("zeroing device memory", e))
            }
            (Mem::Host(v), Backend::Emulated(_)) => {
                let words = (n * std::mem::size_of::<T>()).div_ceil(8);
                v[..words].fill(0);
                Ok(())
            }
            _ => Err(mixed_devices()),
        }
    }
}

/// A failed allocation of `bytes`; out of memory says how much was asked
/// and held, and what makes a step smaller.
fn allocation_failed(dev: &CudaDevice, bytes: usize, e: DriverError) -> Error {
    if e.0 != CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return driver_err("allocating device memory", e);
    }
    out_of_memory(&dev.name, bytes, dev.memory().now)
}

/// The out-of-memory error, apart from the device for its test.
fn out_of_memory(device: &str, bytes: usize, held: usize) -> Error {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    Error::Cuda(format!(
        "out of memory on {device}: {:.1} MiB more asked for, {:.1} MiB already held by ptuning's buffers; use a smaller --batch-size (or --eval-batch-size, --max-seq-len), --precision bf16, or a card with more memory",
        mib(bytes),
        mib(held)
    ))
}

fn mixed_devices() -> Error {
    Error::Cuda("a buffer of one device used on another".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_memory_says_what_was_asked_and_what_helps() {
        let e = super::out_of_memory("NVIDIA H100", 3 << 29, 5 << 30).to_string();
        assert!(
            e.contains(
                "out of memory on NVIDIA H100: 1536.0 MiB more asked for, 5120.0 MiB already held"
            ) && e.contains("--batch-size"),
            "{e}"
        );
    }
}
