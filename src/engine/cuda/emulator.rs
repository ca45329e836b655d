//! The CUDA device emulated on the CPU, for tests on machines without a GPU:
//! kernels.cu built with g++ against tools/cuda_emu/emu.h into a shared
//! library (the threads of a block as fibers, run from barrier to barrier), and
//! cuBLAS's column-major GEMM as a plain loop. Device memory is host memory,
//! so the engine's raw pointers work unchanged. It checks semantics, never
//! speed.

use std::ffi::{c_char, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::engine::cuda::device::Precision;
use crate::engine::cuda::kernel_cache::fnv1a64;
use crate::engine::cuda::kernels;
use crate::engine::cuda::tf32x3::tf32_round;
use crate::error::{Error, Result};

const EMU_H: &str = include_str!("../../../tools/cuda_emu/emu.h");
const EMU_LIB_CPP: &str = include_str!("../../../tools/cuda_emu/emu_lib.cpp");

type LaunchFn =
    unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, *const u64, i32, i32, u32) -> i32;

/// The loaded emulator library for one head dimension.
pub struct Emulator {
    launch: LaunchFn,
    /// The order of the blocks and of the threads of a block: -1 as
    /// PTUNING_EMU_ORDER says, 0 in order, 1 reversed.
    order: AtomicI32,
    // Keeps `launch` valid.
    _lib: libloading::Library,
}

fn emu_err(what: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("emulator: {what}"))
}

/// A hash of the sources: the library's file name changes with them.
fn sources_hash(head_dim: usize, flags: &[&str]) -> u64 {
    fnv1a64(&[
        kernels::source().as_bytes(),
        EMU_H.as_bytes(),
        EMU_LIB_CPP.as_bytes(),
        &head_dim.to_le_bytes(),
        flags.concat().as_bytes(),
    ])
}

/// `PTUNING_EMU_SANITIZE=1` builds the emulated kernels with AddressSanitizer
/// and UBSan. The process must start with libasan preloaded (LD_PRELOAD),
/// so that every allocation, the device buffers' included, has redzones: a
/// kernel that reads or writes past a buffer then stops with ASan's report,
/// where a GPU would fault or read another buffer. For tests.
pub const SANITIZE_ENV: &str = "PTUNING_EMU_SANITIZE";

/// The compiler flags of the emulator library beyond the plain build.
fn extra_flags() -> &'static [&'static str] {
    if std::env::var_os(SANITIZE_ENV).is_some_and(|v| v == "1") {
        &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]
    } else {
        &[]
    }
}

impl Emulator {
    /// Builds (once per source version, in the temp dir) and loads the
    /// emulator for `head_dim`. Needs g++ with C++20 ($CXX to choose another).
    pub fn load(head_dim: usize) -> Result<Self> {
        let flags = extra_flags();
        let lib_path = std::env::temp_dir().join(format!(
            "ptuning-cuda-emu-{:016x}.so",
            sources_hash(head_dim, flags)
        ));
        {
            // One build at a time in the process: the build's scratch names
            // carry the process id, and threads opening devices at once
            // (the tests) would share them.
            static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
            if !lib_path.exists() {
                build(head_dim, flags, &lib_path)?;
            }
        }
        // SAFETY: our own library, whose only exported symbols are the two
        // C functions below with these signatures.
        let lib = unsafe { libloading::Library::new(&lib_path) }.map_err(emu_err)?;
        let launch: LaunchFn =
            *unsafe { lib.get::<LaunchFn>(b"ptuning_emu_launch\0") }.map_err(emu_err)?;
        let hd: unsafe extern "C" fn() -> i32 =
            *unsafe { lib.get(b"ptuning_emu_head_dim\0") }.map_err(emu_err)?;
        // SAFETY: a plain C function without arguments.
        let built = unsafe { hd() };
        if built as usize != head_dim {
            return Err(emu_err(format!(
                "{} was built for HEAD_DIM {built}, not {head_dim}",
                lib_path.display()
            )));
        }
        Ok(Emulator {
            launch,
            order: AtomicI32::new(-1),
            _lib: lib,
        })
    }

    /// Runs the blocks, and the threads of each block, in reverse order
    /// from now on (false: in order). Between two barriers each thread runs
    /// whole, so a kernel gives the same bits in both orders unless it has a
    /// race.
    pub fn reverse_threads(&self, reverse: bool) {
        self.order.store(i32::from(reverse), Ordering::Relaxed);
    }

    /// Runs kernel `name` over `grid` × `block` threads with `args` slots
    /// and `shared_bytes` of dynamic shared memory: a block that writes past
    /// them stops the process, one that reads past them reads NaN.
    pub fn launch(
        &self,
        name: &str,
        (grid, block): ((u32, u32, u32), u32),
        args: &[u64],
        shared_bytes: u32,
    ) -> Result<()> {
        let c = CString::new(name).expect("kernel names have no NUL");
        // The emulator's block state (shared memory, barriers) is global:
        // one launch at a time in the process, whatever the device.
        static ONE_LAUNCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the slots are the kernel's parameters, pointers into live
        // host blocks (the emulated device memory).
        let rc = unsafe {
            (self.launch)(
                c.as_ptr(),
                grid.0,
                grid.1,
                grid.2,
                block,
                args.as_ptr(),
                args.len() as i32,
                self.order.load(Ordering::Relaxed),
                shared_bytes,
            )
        };
        match rc {
            0 => Ok(()),
            -1 => Err(emu_err(format!("no kernel {name}"))),
            _ => Err(emu_err(format!(
                "kernel {name} takes another number of arguments than {}",
                args.len()
            ))),
        }
    }
}

/// Writes the sources to a scratch folder with their repository layout and
/// compiles them into `out` (atomically: a temp name, then a rename).
fn build(head_dim: usize, flags: &[&str], out: &std::path::Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("ptuning-cuda-emu-src-{}", std::process::id()));
    let emu_lib = dir.join("tools/cuda_emu/emu_lib.cpp");
    let files: Vec<(PathBuf, &str)> = [
        (dir.join("tools/cuda_emu/emu.h"), EMU_H),
        (emu_lib.clone(), EMU_LIB_CPP),
    ]
    .into_iter()
    .chain(
        kernels::FILES
            .iter()
            .map(|(name, text)| (dir.join("src/engine/cuda/kernels").join(name), *text)),
    )
    .collect();
    for (path, text) in &files {
        let parent = path.parent().expect("a file in a folder");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let result = std::process::Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-shared",
            "-fPIC",
            "-Wno-unknown-pragmas",
        ])
        .args(flags)
        .arg(format!("-DHEAD_DIM={head_dim}"))
        .arg(&emu_lib)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| emu_err(format!("cannot run {cxx}: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !result.status.success() {
        return Err(emu_err(format!(
            "{cxx} failed:\n{}",
            String::from_utf8_lossy(&result.stderr)
        )));
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

/// cuBLAS's GEMM as a loop, column-major: C[m×n] = op(A)[m×k]·op(B)[k×n]
/// (+ C when beta is 1), C f32, or bf16 bits (rounded to nearest even) when
/// `c_bf16`. A and B are f32, read as they are in fp32 and rounded to tf32
/// in tf32 (to nearest, as the tensor cores' inputs), or bf16 bits in bf16.
///
/// # Safety
/// The pointers must address live memory of the sizes the leading
/// dimensions and m, n, k describe.
pub unsafe fn gemm(
    (ta, tb): (bool, bool),
    (m, n, k): (usize, usize, usize),
    (a, lda): (u64, usize),
    (b, ldb): (u64, usize),
    (c, ldc, c_bf16): (u64, usize, bool),
    precision: Precision,
    beta: f32,
) {
    let read = |base: u64, i: usize| -> f32 {
        match precision {
            Precision::Bf16 => f32::from_bits((*(base as *const u16).add(i) as u32) << 16),
            Precision::Tf32 => tf32_round(*(base as *const f32).add(i)),
            Precision::Fp32 => *(base as *const f32).add(i),
        }
    };
    // op(A) as rows [m, k] and op(B) as columns [n, k], read once, so that
    // each output is one dot product of two contiguous rows, summed in
    // order of l.
    let a_rows: Vec<f32> = (0..m * k)
        .map(|x| {
            let (i, l) = (x / k, x % k);
            read(a, if ta { l + i * lda } else { i + l * lda })
        })
        .collect();
    let b_cols: Vec<f32> = (0..n * k)
        .map(|x| {
            let (j, l) = (x / k, x % k);
            read(b, if tb { j + l * ldb } else { l + j * ldb })
        })
        .collect();
    for j in 0..n {
        let bj = &b_cols[j * k..(j + 1) * k];
        for i in 0..m {
            let ai = &a_rows[i * k..(i + 1) * k];
            let mut s = 0.0f32;
            for (x, y) in ai.iter().zip(bj) {
                s += x * y;
            }
            let at = i + j * ldc;
            if c_bf16 {
                let dst = (c as *mut u16).add(at);
                let old = f32::from_bits((*dst as u32) << 16);
                let v = if beta == 0.0 { s } else { old * beta + s };
                *dst = half::bf16::from_f32(v).to_bits();
            } else {
                let dst = (c as *mut f32).add(at);
                *dst = if beta == 0.0 { s } else { *dst * beta + s };
            }
        }
    }
}
