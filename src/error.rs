//! One error type for the library. Every failure a user can cause (a bad file, a
//! missing tensor, a wrong shape) is a variant with enough context to fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    /// A data file whose content is not what its task reads (a missing
    /// field, a wrong type, an unknown label); `message` starts with the line.
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(
        "{path}: unsupported model_type {found:?}; expected one of: bert, roberta, xlm-roberta"
    )]
    UnknownModelType { path: PathBuf, found: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: missing tensor {name:?} (also tried {tried:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        tried: Vec<String>,
    },
    #[error("{path}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor {name:?} has dtype {found}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("{path}: tensor {name:?} has dtype {found}, expected {expected}")]
    UnexpectedDtype {
        path: PathBuf,
        name: String,
        found: String,
        expected: String,
    },
    /// A file a model folder needs is absent; `message` says which and why.
    #[error("{path}: {message}")]
    MissingFile { path: PathBuf, message: String },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("model {id:?} is not a local folder and is not in the local Hugging Face cache ({cache}); this machine is offline, so download it elsewhere or point --model at a folder with config.json, model.safetensors and tokenizer.json")]
    ModelNotFound { id: String, cache: PathBuf },
    #[error("training stopped: {0}")]
    Training(String),
    /// A stop asked for by a signal (Ctrl-C): not a failure of the run.
    #[error("interrupted {0}")]
    Interrupted(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The CUDA device or its libraries failed, or cannot run what was asked.
    #[error("CUDA: {0}")]
    Cuda(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The message without the kind's prefix where the kind is only a
    /// prefix ("invalid argument: "), to put behind more context.
    pub fn message(&self) -> String {
        match self {
            Error::InvalidArgument(message) => message.clone(),
            other => other.to_string(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
