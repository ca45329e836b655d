//! `ptuning serve`: adapters over one backbone behind an HTTP API.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;

use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::model::hub::DEFAULT_MODEL;
use crate::serve::{ServeConfig, Server, Stopped};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The backbone every adapter must have been trained on (folder or hub id).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// An adapter to load at start, as NAME=RUN_DIR (a run or checkpoint
    /// folder); repeatable.
    #[arg(long = "adapter", value_name = "NAME=RUN_DIR")]
    adapters: Vec<String>,
    /// Address to listen on: IP:PORT, or HOST:PORT (listens on the first
    /// address HOST resolves to).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a request waits for others to share its forward pass (ms).
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Requests waiting for the model at most; beyond that, 503.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Sequences per request (a multiple-choice input counts its choices).
    #[arg(long, default_value_t = 64)]
    max_inputs: usize,
    /// Request body limit in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a client has to send a request, from its first byte (408
    /// after, or the connection closed if the head is not in), and that a
    /// connection may sit idle.
    /// At most a day: deadlines are times from now, which must not overflow.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    request_timeout_secs: u64,
    /// Seconds SIGINT/SIGTERM waits for the accepted requests before closing
    /// their connections; a second signal stops at once (at most a day).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    shutdown_grace_secs: u64,
    /// Bearer token for POST/DELETE /v1/adapters (default: $PTUNING_ADMIN_TOKEN;
    /// neither: admin endpoints are disabled).
    #[arg(long)]
    admin_token: Option<String>,
}

pub fn run(args: ServeArgs, compute: Compute) -> Result<()> {
    if args.max_batch == 0 || args.queue == 0 || args.max_inputs == 0 || args.max_body_bytes == 0 {
        return Err(Error::InvalidArgument(
            "--max-batch, --queue, --max-inputs and --max-body-bytes must be at least 1".into(),
        ));
    }
    let adapters = args
        .adapters
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
                Ok((name.to_string(), PathBuf::from(dir)))
            }
            _ => Err(Error::InvalidArgument(format!(
                "--adapter {spec:?}: expected NAME=RUN_DIR"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, (name, _)) in adapters.iter().enumerate() {
        if adapters[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(Error::InvalidArgument(format!(
                "--adapter: the name {name:?} is given more than once; give each adapter its own NAME"
            )));
        }
    }
    // Before the model loads, so that a typo fails at once.
    let addr = resolve(&args.addr)?;
    let admin_token = args
        .admin_token
        .or_else(|| std::env::var("PTUNING_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let config = ServeConfig {
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue,
        max_inputs: args.max_inputs,
        max_body_bytes: args.max_body_bytes,
        admin_token,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        shutdown_grace: grace,
        compute,
    };
    let server = Server::load(&args.model, config)?;
    for (name, dir) in &adapters {
        let a = server
            .load_adapter(name, dir)
            .map_err(|e| adapter_error(name, dir, e))?;
        eprintln!(
            "adapter {name}: {} ({} head, {} output{}, {} prompt of {}) from {}",
            a.info.task,
            serde_json::to_value(a.info.head)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            a.head.num_labels(),
            if a.head.num_labels() == 1 { "" } else { "s" },
            a.method.name(),
            a.prefix_len,
            a.path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ptuning-http")
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start the async runtime: {e}")))?;
    let stopped = runtime.block_on(async {
        let stop = stop_signals(grace)?;
        server
            .serve(addr, stop, |addr| {
                eprintln!("listening on http://{addr} (Ctrl-C to stop)");
            })
            .await
    })?;
    let open = match stopped {
        Stopped::Drained => {
            eprintln!("stopped");
            return Ok(());
        }
        Stopped::GraceOver { open } => {
            eprintln!(
                "stopped: {open} connection(s) still waiting after {}s (--shutdown-grace-secs) were closed",
                grace.as_secs()
            );
            open
        }
        Stopped::Forced { open } => {
            eprintln!("stopped at the second signal: {open} connection(s) closed");
            open
        }
    };
    // Exits here: dropping the server would wait for the model worker to
    // finish requests whose clients are gone. Failure when requests were cut.
    std::process::exit(if open == 0 { 0 } else { 1 })
}

/// `--addr` as a socket address, host names resolved.
fn resolve(addr: &str) -> Result<SocketAddr> {
    let invalid = |why: String| {
        Error::InvalidArgument(format!(
            "--addr {addr:?}: {why}; expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080"
        ))
    };
    addr.to_socket_addrs()
        .map_err(|e| invalid(e.to_string()))?
        .next()
        .ok_or_else(|| invalid("the host has no address".into()))
}

/// A load error, prefixed with the `--adapter` flag it came from.
fn adapter_error(name: &str, dir: &Path, e: Error) -> Error {
    // The message alone: `{e}` would say "invalid argument" twice.
    Error::InvalidArgument(format!(
        "--adapter {name}={}: {}",
        dir.display(),
        e.message()
    ))
}

/// A message for every SIGINT (Ctrl-C) and SIGTERM from now on: the first
/// stops the server gracefully, the second at once.
fn stop_signals(grace: Duration) -> Result<mpsc::UnboundedReceiver<()>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut signals = super::signals::Signals::listen()?;
    tokio::spawn(async move {
        let mut first = true;
        while signals.next().await {
            if first {
                eprintln!(
                    "stopping: answering the accepted requests (at most {}s; Ctrl-C again to stop at once)",
                    grace.as_secs()
                );
                first = false;
            }
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// The error `ptuning serve ARGS` stops with, before it would listen.
    fn refused(args: &[&str]) -> String {
        let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-bert");
        let argv = ["serve", "--model", tiny]
            .into_iter()
            .chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).unwrap();
        run(cli.serve, Compute::default()).unwrap_err().to_string()
    }

    #[test]
    fn startup_errors_name_the_flag() {
        assert_eq!(
            refused(&["--adapter", "cb=X", "--adapter", "cb=X"]),
            "invalid argument: --adapter: the name \"cb\" is given more than once; give each adapter its own NAME"
        );
        let e = refused(&["--adapter", "cb=/nonexistent"]);
        assert!(
            e.starts_with(
                "invalid argument: --adapter cb=/nonexistent: /nonexistent is not a checkpoint folder"
            ),
            "{e}"
        );
        assert_eq!(
            refused(&["--addr", "localhost"]),
            "invalid argument: --addr \"localhost\": invalid socket address; expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080"
        );
    }

    #[test]
    fn addr_takes_host_names() {
        let addr = resolve("localhost:18233").unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 18233);
        assert_eq!(
            resolve("0.0.0.0:80").unwrap(),
            SocketAddr::from(([0, 0, 0, 0], 80))
        );
    }
}
