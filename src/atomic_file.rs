//! Atomic file writes: a reader (or a crash) sees the old content or the new,
//! never a torn file. Checkpoints, summaries, curves and predictions use it.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: into a temporary file in the same
/// folder, fsynced, then renamed over `path` (and the folder synced so the
/// rename survives a power loss). Readers see the old content or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        // Errors name `path`: the temporary name means nothing to a user
        // (whose folder may be missing or read-only).
        let mut f = File::create(&tmp).map_err(|e| Error::io(path, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Makes renames and creations inside `dir` durable. Best effort: not every
/// platform can open a folder for syncing, and a failure here loses nothing
/// that a crash would not.
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_names_the_target_on_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        let missing = tmp.path().join("nodir/x.jsonl");
        let err = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:", missing.display())) && !err.contains(".tmp-"),
            "{err}"
        );
    }
}
