//! The run folder's log files: `metrics.jsonl` (one JSON object per event,
//! appended as training goes) and `summary.json` (the final result).
//!
//! Both are written so that a crash never costs more than the line being
//! written: the log is flushed after every line and opened in append mode, so a
//! resumed run continues the same file; the summary (and every other whole file
//! of a run, through [`write_atomic`]) is written under a temporary name, synced
//! and renamed into place, so readers see the old file or the new one, never a
//! torn one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};

/// File name of the event log inside a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the final summary inside a run folder.
pub const SUMMARY_FILE: &str = "summary.json";
/// A sweep's record in its folder (see training::sweep).
pub const SWEEP_FILE: &str = "sweep.json";
/// A sweep's table, in Markdown.
pub const TABLE_FILE: &str = "sweep.md";

/// What a line of `metrics.jsonl` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The end of a training epoch (mean training loss, current learning rate).
    Epoch,
    /// An evaluation on the dev set.
    Eval,
}

/// One line of `metrics.jsonl`:
/// `{"event": "epoch"|"eval", "epoch": .., "step": .., "loss": .., "lr": .., <metrics>...}`.
/// The metrics are flattened into the object so that tools such as `jq` or
/// pandas' `read_json(lines=True)` see one column per metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsEvent {
    pub event: EventKind,
    /// 1-based epoch the event belongs to.
    pub epoch: usize,
    /// Global optimizer step at the time of the event.
    pub step: u64,
    /// Mean loss (training loss for epochs, dev loss for evaluations), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate at the time of the event, if meaningful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Task metrics by name (accuracy, f1, pearson, ...).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
}

/// The append-only event log of a run. Each [`MetricsLog::append`] writes one
/// complete line and flushes it, so `tail -f` shows progress live and a crash
/// loses at most the line in flight.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens (creating if needed) `<run_dir>/metrics.jsonl` for appending; a
    /// resumed run continues the existing file. Events of epochs after
    /// `epochs_completed`, the checkpoint's, are dropped first: a crash between
    /// an epoch's line and its checkpoint leaves a line that the resumed run
    /// writes again. If the file ends in a torn line (a crash mid-write), a
    /// newline is added first so the next event starts on a line of its own
    /// instead of corrupting the torn one further.
    pub fn open(run_dir: &Path, epochs_completed: usize) -> Result<Self> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let path = run_dir.join(METRICS_FILE);
        match std::fs::read_to_string(&path) {
            // A fresh start in a folder a failed start left: a log of its own.
            Ok(text) if epochs_completed == 0 && !text.is_empty() => {
                write_atomic(&path, b"")?;
            }
            Ok(text) => {
                // Line by line, so that a torn line is kept as it was, not a
                // reason to refuse the resume.
                let after = |line: &str| {
                    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|e| {
                        e["epoch"]
                            .as_u64()
                            .is_some_and(|epoch| epoch > epochs_completed as u64)
                    })
                };
                if text.lines().any(after) {
                    let kept: String = text
                        .lines()
                        .filter(|line| !after(line))
                        .map(|line| format!("{line}\n"))
                        .collect();
                    write_atomic(&path, kept.as_bytes())?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(|e| Error::io(&path, e))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(MetricsLog { path, file })
    }

    /// The log file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a JSON line and flushes it.
    pub fn append(&mut self, event: &MetricsEvent) -> Result<()> {
        let value = serde_json::to_value(event).map_err(|e| Error::Json {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        self.append_value(&value)
    }

    /// Appends any JSON object as one line; for events that do not fit
    /// [`MetricsEvent`] (e.g. a `"resume"` marker).
    pub fn append_value(&mut self, value: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_vec(value).map_err(|e| Error::Json {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        // One write call per line: with O_APPEND the line lands whole at the end.
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads every event of `<run_dir>/metrics.jsonl`, in order. Blank lines and a
/// torn *last* line (a crash mid-write) are skipped; a corrupt line elsewhere is
/// an error naming its line number. A missing file reads as no events.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = run_dir.join(METRICS_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(&path, e))?;
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if Some(i) == last => {}
            Err(e) => {
                return Err(Error::Json {
                    path,
                    message: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    Ok(out)
}

/// Reads a JSON file into `T`; errors give the line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: format!("line {} column {}: {e}", e.line(), e.column()),
    })
}

/// Whether `path` holds something a new folder there would replace or mix
/// with: a file, or a folder with any entry (an unreadable one counts).
pub fn is_occupied(path: &Path) -> bool {
    match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Writes `<run_dir>/summary.json` (pretty-printed) atomically.
pub fn write_summary(run_dir: &Path, summary: &serde_json::Value) -> Result<()> {
    let path = run_dir.join(SUMMARY_FILE);
    let mut bytes = serde_json::to_vec_pretty(summary).map_err(|e| Error::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    write_atomic(&path, &bytes)
}
