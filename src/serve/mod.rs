//! `ptuning serve`: many adapters over one frozen backbone, behind an HTTP API.
//!
//! - [`registry`]: the loaded adapters (folded prefix tables and heads), each
//!   checked against the backbone's weights hash.
//! - [`batcher`]: the bounded queue and the worker thread that runs requests of
//!   any adapters together in one forward pass (mixed-task dynamic batching).
//! - [`codec`]: a request's inputs into sequences and the logits back into
//!   answers, per head (labels, choices, NER entity spans, QA answer spans).
//! - [`http`]: the axum routes, request checks and JSON errors.
//! - [`metrics`]: Prometheus text metrics.
//! - [`openapi`]: the OpenAPI 3 description served at `/openapi.json`.
//!
//! In-process use (what the tests do):
//! ```no_run
//! use ptuning::serve::{ServeConfig, Server};
//! # fn main() -> ptuning::Result<()> {
//! let server = Server::load("tests/fixtures/tiny-bert", ServeConfig::default())?;
//! server.load_adapter("cb", std::path::Path::new("runs/cb"))?;
//! let app = server.router(); // an axum::Router
//! # let _ = app; Ok(()) }
//! ```

pub mod batcher;
pub mod codec;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod registry;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::cuda::CudaEncoder;
use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::model::bert::BertModel;
use crate::serve::batcher::{BatchOptions, Batcher, PauseGuard};
use crate::serve::codec::TextTools;
use crate::serve::metrics::Metrics;
use crate::serve::registry::{Registry, ServedAdapter};
use crate::training::trainer::Backbone;

/// The server's limits and knobs (the `ptuning serve` flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Sequences per forward pass.
    pub max_batch: usize,
    /// How long a request waits for others to share its forward pass.
    pub max_wait: Duration,
    /// Requests waiting for the model at most; beyond, 503.
    pub queue: usize,
    /// Sequences per request (a multiple-choice input counts its choices).
    pub max_inputs: usize,
    /// Request body size limit (413 beyond).
    pub max_body_bytes: usize,
    /// Bearer token of the admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// Where the backbone runs.
    pub compute: Compute,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue: 1024,
            max_inputs: 64,
            max_body_bytes: 1 << 20,
            admin_token: None,
            compute: Compute::default(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub config: ServeConfig,
    pub backbone: Arc<BertModel>,
    /// The backbone's tokenizer, prepared for every kind of input.
    pub text: TextTools,
    /// As given to `--model`.
    pub backbone_name: String,
    /// [`crate::training::checkpoint::weights_hash`] of the backbone.
    pub backbone_hash: String,
    pub registry: Registry,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Loads a checkpoint (or run) folder as adapter `name`, refusing one
    /// trained on other backbone weights.
    pub fn load_adapter(&self, name: &str, path: &Path) -> Result<Arc<ServedAdapter>> {
        if self.registry.contains(name) {
            return Err(Error::InvalidArgument(format!(
                "an adapter named {name:?} is already loaded; unload it first"
            )));
        }
        let adapter = ServedAdapter::load(
            name,
            path,
            &self.backbone.config,
            &self.backbone_name,
            &self.backbone_hash,
        )?;
        self.registry.insert(adapter)
    }
}

/// A running model service: the state and its batching worker.
pub struct Server {
    pub state: Arc<AppState>,
}

impl Server {
    /// Loads the backbone (`--model`: a folder or a hub id) and starts the
    /// worker, with the backbone on a GPU when `config.compute` says so.
    pub fn load(model: &str, config: ServeConfig) -> Result<Self> {
        let backbone = Backbone::load(model)?;
        let gpu = config.compute.open_encoder(&backbone.model)?;
        Ok(Self::with_gpu(backbone, gpu, model, config))
    }

    /// Starts the worker over an already loaded backbone, on the CPU.
    pub fn new(backbone: Backbone, name: &str, config: ServeConfig) -> Self {
        Self::with_gpu(backbone, None, name, config)
    }

    fn with_gpu(
        backbone: Backbone,
        gpu: Option<CudaEncoder>,
        name: &str,
        config: ServeConfig,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let batcher = Batcher::start(
            Arc::clone(&backbone.model),
            gpu,
            backbone.tokenizer.pad_id(),
            BatchOptions {
                max_batch: config.max_batch.max(1),
                max_wait: config.max_wait,
                queue: config.queue.max(1),
            },
            Arc::clone(&metrics),
        );
        Server {
            state: Arc::new(AppState {
                config,
                backbone: backbone.model,
                text: TextTools::new(backbone.tokenizer),
                backbone_name: name.to_string(),
                backbone_hash: backbone.hash,
                registry: Registry::default(),
                batcher,
                metrics,
            }),
        }
    }

    pub fn load_adapter(&self, name: &str, path: &Path) -> Result<Arc<ServedAdapter>> {
        self.state.load_adapter(name, path)
    }

    /// Adds an adapter built in memory.
    pub fn add_adapter(&self, adapter: ServedAdapter) -> Result<Arc<ServedAdapter>> {
        self.state.registry.insert(adapter)
    }

    /// The HTTP routes.
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.state))
    }

    /// Holds the model worker before its next forward pass until the guard is
    /// dropped; the queue fills meanwhile (tests of the 503 path).
    pub fn pause(&self) -> PauseGuard {
        self.state.batcher.pause()
    }

    /// Refuses new requests, finishes the queued ones, stops the worker.
    pub fn shutdown(&self) {
        self.state.batcher.close();
    }

    /// Serves on `addr` until `shutdown` resolves, then stops accepting,
    /// lets every accepted request finish and stops the worker.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        on_listening(local);
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::InvalidArgument(format!("server error: {e}")))?;
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || state.batcher.close())
            .await
            .map_err(|e| Error::InvalidArgument(format!("stopping the model worker: {e}")))?;
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
