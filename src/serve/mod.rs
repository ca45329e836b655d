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
//! [`Server::serve`] puts the routes on a TCP socket, where each connection
//! has `request_timeout` to send a request and a stop waits for the accepted
//! requests at most `shutdown_grace`.
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

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};

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
    /// How long a client has to send a request, head and body, counted from
    /// its first byte, and how long a connection may sit idle. Past it the
    /// connection is closed, after a 408 when the head arrived in time.
    pub request_timeout: Duration,
    /// How long a stop waits for the accepted requests before closing their
    /// connections.
    pub shutdown_grace: Duration,
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
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
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

    /// Serves on `addr` until the first message on `stop`, then stops
    /// accepting and waits for every accepted request to be answered, at most
    /// `config.shutdown_grace`, and for the worker to finish. When the grace
    /// period runs out, or at a second message, it closes the connections
    /// still open instead (their requests get no answer) and returns without
    /// waiting for the worker, which finishes its queue in the background.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        mut stop: mpsc::UnboundedReceiver<()>,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<Stopped> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        on_listening(local);
        // Each open connection holds a receiver: their count is the
        // connections open, and sending `true` closes them.
        let cut = Arc::new(watch::channel(false).0);
        let listener = TimedListener {
            listener,
            timeout: self.state.config.request_timeout,
            cut: Arc::clone(&cut),
        };
        let app = self
            .router()
            .into_make_service_with_connect_info::<RequestClock>();
        let (drain, drained) = oneshot::channel::<()>();
        let mut serving = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = drained.await;
                })
                .into_future(),
        );
        next_stop(&mut stop).await;
        let _ = drain.send(());
        let forced = tokio::select! {
            served = &mut serving => {
                served.map_err(server_error)?.map_err(server_error)?;
                let state = Arc::clone(&self.state);
                let stopping = tokio::task::spawn_blocking(move || state.batcher.close());
                return tokio::select! {
                    stopped = stopping => {
                        stopped.map_err(|e| {
                            Error::InvalidArgument(format!("stopping the model worker: {e}"))
                        })?;
                        Ok(Stopped::Drained)
                    }
                    () = next_stop(&mut stop) => Ok(Stopped::Forced { open: 0 }),
                };
            }
            () = tokio::time::sleep(self.state.config.shutdown_grace) => false,
            () = next_stop(&mut stop) => true,
        };
        let open = cut.receiver_count();
        cut.send_replace(true);
        // A connection closes at its next read or write, which hyper makes at
        // once unless it only waits for its handler (a pipelined request
        // already read); such a connection is left to the runtime.
        let _ = tokio::time::timeout(CUT_WAIT, serving).await;
        // Not waited for: the worker may still have the requests of the
        // closed connections to run.
        let state = Arc::clone(&self.state);
        drop(tokio::task::spawn_blocking(move || state.batcher.close()));
        Ok(if forced {
            Stopped::Forced { open }
        } else {
            Stopped::GraceOver { open }
        })
    }
}

fn server_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("server error: {e}"))
}

/// How [`Server::serve`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every accepted request was answered and the worker has stopped.
    Drained,
    /// The grace period ran out: the `open` connections left were closed,
    /// their requests unanswered, and the worker stops in the background.
    GraceOver { open: usize },
    /// A second stop came first: the same, or, once every request was
    /// answered, the worker left to stop in the background (`open` is 0).
    Forced { open: usize },
}

/// How long a cut waits for the connections to close.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Waits for the next stop request; a closed channel sends none.
async fn next_stop(stop: &mut mpsc::UnboundedReceiver<()>) {
    if stop.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
}

/// The listening socket; each connection it accepts is a [`TimedConn`].
struct TimedListener {
    listener: TcpListener,
    timeout: Duration,
    cut: Arc<watch::Sender<bool>>,
}

impl axum::serve::Listener for TimedListener {
    type Io = TimedConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TimedConn, SocketAddr) {
        // axum's accept, which retries (and logs) failed accepts.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let mut cut = self.cut.subscribe();
        let conn = TimedConn {
            stream,
            clock: RequestClock::new(self.timeout),
            timer: Box::pin(tokio::time::sleep(self.timeout)),
            // The sender dropped (`serve` itself dropped) cuts too.
            until_cut: Some(Box::pin(async move {
                let _ = cut.wait_for(|&cut| cut).await;
            })),
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// What a connection waits for, and until when.
enum Phase {
    /// Waiting for a request: its first byte must come by then.
    Idle(Instant),
    /// A request's head is arriving: the whole request must be in by then.
    Receiving(Instant),
    /// A request is handled: its body is read against its own deadline, and
    /// the model may take its time.
    Handling,
}

/// A connection's request deadline, shared by its socket (which enforces it
/// on reads) and its requests (as axum's `ConnectInfo`).
#[derive(Clone)]
pub(crate) struct RequestClock(Arc<ClockState>);

struct ClockState {
    timeout: Duration,
    phase: Mutex<Phase>,
}

impl RequestClock {
    fn new(timeout: Duration) -> Self {
        RequestClock(Arc::new(ClockState {
            timeout,
            phase: Mutex::new(Phase::Idle(Instant::now() + timeout)),
        }))
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.0.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the socket stops waiting for the client; `None` while a request
    /// is handled.
    fn deadline(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Idle(at) | Phase::Receiving(at) => Some(at),
            Phase::Handling => None,
        }
    }

    /// Bytes came in: the first of a request starts its time.
    fn received(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Receiving(Instant::now() + self.0.timeout);
        }
    }

    /// A request's head is in and its handler starts: the socket waits
    /// without a deadline until the returned guard drops. Returns when the
    /// body must be in (what is left of the request's time).
    pub(crate) fn handling(&self) -> (Instant, Handling) {
        let mut phase = self.phase();
        let deadline = match *phase {
            Phase::Receiving(at) => at,
            // A pipelined request, read while the one before was handled.
            Phase::Idle(_) | Phase::Handling => Instant::now() + self.0.timeout,
        };
        *phase = Phase::Handling;
        (deadline, Handling(self.clone()))
    }
}

impl Connected<IncomingStream<'_, TimedListener>> for RequestClock {
    fn connect_info(stream: IncomingStream<'_, TimedListener>) -> Self {
        stream.io().clock.clone()
    }
}

/// Restarts the idle time of its connection when the request is answered.
pub(crate) struct Handling(RequestClock);

impl Drop for Handling {
    fn drop(&mut self) {
        let clock = &self.0;
        *clock.phase() = Phase::Idle(Instant::now() + clock.0.timeout);
    }
}

/// An accepted socket: reads fail once its [`RequestClock`] runs out, and
/// every read and write once the server cuts its connections.
struct TimedConn {
    stream: TcpStream,
    clock: RequestClock,
    timer: Pin<Box<Sleep>>,
    /// Resolves when the server cuts its connections; `None` once it has.
    until_cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl TimedConn {
    fn check_cut(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(until_cut) = &mut self.until_cut {
            if until_cut.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.until_cut = None;
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server is shutting down",
        ))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no complete request within the request timeout",
    )
}

impl AsyncRead for TimedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_cut(cx)?;
        let deadline = this.clock.deadline();
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return Poll::Ready(Err(timed_out()));
        }
        let filled = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > filled {
                    this.clock.received();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(at) = deadline {
                    if this.timer.deadline() != at {
                        this.timer.as_mut().reset(at);
                    }
                    if this.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(timed_out()));
                    }
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for TimedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
