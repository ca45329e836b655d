//! Built kernels kept on disk, named by a hash of everything that built
//! them, so that a change of any input builds anew and an unchanged one is
//! read back: the PTX NVRTC compiles for a card, and the emulator's library.
//!
//! NVRTC takes seconds to compile kernels.cu (about 5 s on 2 cores at head
//! size 64, 8 s at 128), and every `--device cuda` process opened a device
//! and compiled again: each `train`, `eval`, `serve` and `bench` start. The
//! PTX now goes to `$PTUNING_CACHE/kernels/` (default
//! `~/.cache/ptuning/kernels/`); removing the folder is always safe.

use std::path::{Path, PathBuf};

use crate::atomic_file::write_atomic;
use crate::error::Result;

/// FNV-1a (64-bit) over `parts`, one after the other.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The default folder of compiled kernels: `$PTUNING_CACHE/kernels`, else
/// `~/.cache/ptuning/kernels`; None without a home folder.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    var("PTUNING_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("ptuning")))
        .map(|root| root.join("kernels"))
}

/// The PTX for `key` (a line naming every input of the compile): read from
/// `dir` where a file there was written for the same key, else `compile`d
/// and stored there (atomically; a store that fails only costs the next run
/// a compile). Returns the PTX and whether it came from the folder.
pub fn ptx(
    dir: Option<&Path>,
    key: &str,
    compile: impl FnOnce() -> Result<String>,
) -> Result<(String, bool)> {
    // The key is the file's first line too: a file of another key (a hash
    // collision, or a hand-edited file) is never taken.
    let header = format!("// ptuning kernels: {key}\n");
    let path = dir.map(|d| file(d, key));
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        if let Some(ptx) = text.strip_prefix(&header) {
            return Ok((ptx.to_string(), true));
        }
    }
    let ptx = compile()?;
    if let (Some(dir), Some(path)) = (dir, &path) {
        let stored = std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::Error::io(dir, e))
            .and_then(|_| write_atomic(path, format!("{header}{ptx}").as_bytes()));
        if let Err(e) = stored {
            tracing::debug!("compiled kernels not cached: {e}");
        }
    }
    Ok((ptx, false))
}

/// Forgets the PTX of `key` in `dir` (it did not load: compile anew).
pub fn forget(dir: Option<&Path>, key: &str) {
    if let Some(dir) = dir {
        let _ = std::fs::remove_file(file(dir, key));
    }
}

/// The file of `key`'s PTX in `dir`, named by the key's hash.
fn file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("kernels-{:016x}.ptx", fnv1a64(&[key.as_bytes()])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::cell::Cell;

    #[test]
    fn compiles_once_per_key_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path().join("kernels"));
        let compiles = Cell::new(0);
        let compile = |text: &str| {
            compiles.set(compiles.get() + 1);
            Ok(text.to_string())
        };
        let first = ptx(d.as_deref(), "k1", || compile("ptx one")).unwrap();
        assert_eq!(first, ("ptx one".to_string(), false));
        let again = ptx(d.as_deref(), "k1", || compile("not called")).unwrap();
        assert_eq!(again, ("ptx one".to_string(), true));
        assert_eq!(compiles.get(), 1);
        // Another key (new source, head size, card or NVRTC) compiles.
        let other = ptx(d.as_deref(), "k2", || compile("ptx two")).unwrap();
        assert_eq!(other, ("ptx two".to_string(), false));
        assert_eq!(compiles.get(), 2);
        // A file whose first line names another key is not taken.
        let path = file(d.as_ref().unwrap(), "k1");
        std::fs::write(&path, "// ptuning kernels: k9\nstale").unwrap();
        let fresh = ptx(d.as_deref(), "k1", || compile("ptx one again")).unwrap();
        assert_eq!(fresh, ("ptx one again".to_string(), false));
        // forget() drops it: the next call compiles.
        forget(d.as_deref(), "k1");
        assert!(!path.exists());
        ptx(d.as_deref(), "k1", || compile("ptx three")).unwrap();
        assert_eq!(compiles.get(), 4);
    }

    #[test]
    fn without_a_usable_folder_it_still_compiles() {
        let dir = tempfile::tempdir().unwrap();
        // A folder path under a file: nothing can be stored there.
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let blocked = file.join("kernels");
        for d in [None, Some(blocked.as_path())] {
            let (text, cached) = ptx(d, "k", || Ok("ptx".to_string())).unwrap();
            assert_eq!((text.as_str(), cached), ("ptx", false));
        }
        // A failed compile is the error, and nothing is stored.
        let d = dir.path().join("kernels");
        let err = ptx(Some(&d), "k", || {
            Err(Error::InvalidArgument("NVRTC failed".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("NVRTC failed"), "{err}");
        assert!(!d.exists());
    }
}
