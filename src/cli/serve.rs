//! `ptuning serve`: adapters over one backbone behind an HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::model::hub::DEFAULT_MODEL;
use crate::serve::{shutdown_signal, ServeConfig, Server};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The backbone every adapter must have been trained on (folder or hub id).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// An adapter to load at start, as NAME=RUN_DIR (a run or checkpoint
    /// folder); repeatable.
    #[arg(long = "adapter", value_name = "NAME=RUN_DIR")]
    adapters: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
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
    let admin_token = args
        .admin_token
        .or_else(|| std::env::var("PTUNING_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let config = ServeConfig {
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue,
        max_inputs: args.max_inputs,
        max_body_bytes: args.max_body_bytes,
        admin_token,
        compute,
    };
    let server = Server::load(&args.model, config)?;
    for (name, dir) in &adapters {
        let a = server.load_adapter(name, dir)?;
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
    runtime.block_on(server.serve(args.addr, shutdown_signal(), |addr| {
        eprintln!("listening on http://{addr} (Ctrl-C to stop)");
    }))?;
    eprintln!("stopped");
    Ok(())
}
