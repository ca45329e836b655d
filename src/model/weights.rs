//! Reading tensors from safetensors files.
//!
//! The file is memory-mapped and only its JSON header is parsed up front, so
//! opening is O(header); each tensor is converted straight from the mapped bytes
//! into the `Vec<f32>` the engine owns (one copy, no intermediate buffers).
//! Checkpoints store encoder tensors either bare (`encoder.layer.0...`, as
//! `BertModel.save_pretrained` writes them) or under the task model's prefix
//! (`bert.encoder.layer.0...` from `BertForSequenceClassification`,
//! `roberta.` for RoBERTa and XLM-R); [`WeightFile`] accepts both.
//!
//! [`save_tensors`] is the matching writer for our own checkpoints: F32 only,
//! written atomically so that an interrupted save never leaves a torn file.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors, View};

use crate::atomic_file::write_atomic;
use crate::error::{Error, Result};

/// Prefixes that HF task-model checkpoints put before the encoder's names.
const PREFIXES: [&str; 2] = ["bert.", "roberta."];

/// A memory-mapped safetensors file. Tensors are looked up by their HF name,
/// with or without a `bert.` / `roberta.` prefix.
pub struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section in the file: 8-byte header length + header.
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile")
            .field("path", &self.path)
            .field("tensors", &self.metadata.tensors().len())
            .finish()
    }
}

impl WeightFile {
    /// Maps the file and parses and validates its header (offsets in bounds,
    /// sizes consistent with dtypes and shapes).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. Like every
        // mmap-based loader we assume the file is not truncated or rewritten
        // while mapped; our own writer (`save_tensors`) never rewrites in place,
        // it renames a new file over the old one, which leaves this map intact.
        let mmap = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(WeightFile {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// The file this was opened from, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names as stored in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// Whether `name` (bare or prefixed) is in the file; for optional tensors
    /// such as the pooler.
    pub fn has(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// The name under which `name` is stored, trying [`Self::candidates`] in order.
    pub fn resolve(&self, name: &str) -> Option<String> {
        Self::candidates(name)
            .into_iter()
            .find(|c| self.metadata.info(c).is_some())
    }

    /// Shape of the tensor `name` (bare or prefixed), if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.resolve(name)
            .and_then(|n| self.metadata.info(&n).map(|i| i.shape.clone()))
    }

    /// The stored names tried for `name`: the name itself, then with each
    /// known prefix added, or stripped if it already has one.
    pub fn candidates(name: &str) -> Vec<String> {
        let bare = PREFIXES
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        let mut out = vec![name.to_string()];
        for c in
            std::iter::once(bare.to_string()).chain(PREFIXES.iter().map(|p| format!("{p}{bare}")))
        {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// Reads tensor `name` as f32 (converting from F16 or BF16), checking that
    /// its shape is `expected_shape`. Row-major, as stored.
    pub fn tensor(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.tensor_into(name, expected_shape, &mut out)?;
        Ok(out)
    }

    /// Like [`Self::tensor`], but appends to `out`; used to fuse tensors (q, k, v)
    /// into one buffer without an intermediate copy.
    pub fn tensor_into(
        &self,
        name: &str,
        expected_shape: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.tensor_any_into(&[name], expected_shape, out)
    }

    /// Reads the first of `names` that is present (each bare or prefixed); for
    /// tensors with legacy aliases such as LayerNorm `weight`/`gamma`. A missing
    /// tensor is reported under `names[0]`, listing every name tried.
    pub fn tensor_any(&self, names: &[&str], expected_shape: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.tensor_any_into(names, expected_shape, &mut out)?;
        Ok(out)
    }

    /// [`Self::tensor_any`] appending to `out`.
    pub fn tensor_any_into(
        &self,
        names: &[&str],
        expected_shape: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (stored, info) = self.find(names)?;
        if info.shape != expected_shape {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: stored,
                expected: expected_shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        self.convert_f32(&stored, info, out)
    }

    /// Reads a float tensor of any shape as f32, with its shape; for fixtures
    /// and checkpoints whose shapes are not known in advance.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (stored, info) = self.find(&[name])?;
        let mut out = Vec::new();
        self.convert_f32(&stored, info, &mut out)?;
        Ok((out, info.shape.clone()))
    }

    /// Reads an integer tensor (I64, or I32/U32/I16/U16/I8/U8 widened) with its
    /// shape; for test fixtures such as token ids.
    pub fn tensor_i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let (stored, info) = self.find(&[name])?;
        let b = self.bytes(info);
        let out: Vec<i64> = match info.dtype {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            Dtype::U8 => b.iter().map(|&x| x as i64).collect(),
            other => {
                return Err(Error::UnexpectedDtype {
                    path: self.path.clone(),
                    name: stored,
                    found: other.to_string(),
                    expected: "an integer dtype (I64, I32, U32, I16, U16, I8 or U8)".to_string(),
                })
            }
        };
        Ok((out, info.shape.clone()))
    }

    /// Finds the first of `names` present under any candidate spelling.
    fn find(&self, names: &[&str]) -> Result<(String, &TensorInfo)> {
        let mut tried = Vec::new();
        for name in names {
            for c in Self::candidates(name) {
                if let Some(info) = self.metadata.info(&c) {
                    return Ok((c, info));
                }
                tried.push(c);
            }
        }
        let name = names.first().copied().unwrap_or_default().to_string();
        tried.retain(|t| *t != name);
        Err(Error::MissingTensor {
            path: self.path.clone(),
            name,
            tried,
        })
    }

    /// The tensor's bytes inside the map; offsets were validated by
    /// `read_metadata` against the file length.
    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        &self.mmap[self.data_start + start..self.data_start + end]
    }

    fn convert_f32(&self, stored: &str, info: &TensorInfo, out: &mut Vec<f32>) -> Result<()> {
        let b = self.bytes(info);
        match info.dtype {
            Dtype::F32 => {
                out.reserve(b.len() / 4);
                out.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
                );
            }
            Dtype::F16 => {
                out.reserve(b.len() / 2);
                out.extend(b.chunks_exact(2).map(|c| {
                    half::f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32()
                }));
            }
            Dtype::BF16 => {
                out.reserve(b.len() / 2);
                out.extend(b.chunks_exact(2).map(|c| {
                    f32::from_bits((u16::from_le_bytes(c.try_into().unwrap()) as u32) << 16)
                }));
            }
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    name: stored.to_string(),
                    found: other.to_string(),
                })
            }
        }
        Ok(())
    }
}

/// One F32 tensor to write: little-endian bytes are produced on demand.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes `(name, shape, data)` tensors as an F32 safetensors file at `path`,
/// atomically: the file is written under a temporary name in the same folder,
/// fsynced, then renamed over `path`, so readers see the old file or the new
/// one, never a partial one. Each `data` is row-major with `shape`'s element
/// count. The header carries `{"format": "pt"}` so HF tools accept the file.
pub fn save_tensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, shape, data) in tensors {
        if name.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor names must not be empty",
                path.display()
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor {name:?} given twice",
                path.display()
            )));
        }
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor {name:?} has shape {shape:?} ({n} elements) but {} values",
                path.display(),
                data.len()
            )));
        }
    }

    let views = tensors.iter().map(|(name, shape, data)| {
        (
            name.as_str(),
            F32View {
                shape: shape.as_slice(),
                data,
            },
        )
    });
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}
