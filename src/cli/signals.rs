//! SIGINT (Ctrl-C) and SIGTERM for the long-running commands: `serve`
//! stops gracefully at the first, and `train` and `sweep` stop at the next
//! step; the second stops at once.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// SIGINT and SIGTERM, listened to from the start so that none is missed.
#[cfg(unix)]
pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    pub(super) fn listen() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind| {
            signal(kind)
                .map_err(|e| Error::InvalidArgument(format!("cannot listen for signals: {e}")))
        };
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal; false when none can come any more.
    pub(super) async fn next(&mut self) -> bool {
        tokio::select! {
            Some(()) = self.interrupt.recv() => true,
            Some(()) = self.terminate.recv() => true,
            else => false,
        }
    }
}

/// Ctrl-C, where there are no Unix signals (listened to from the first
/// wait on, not from the start).
#[cfg(not(unix))]
pub(super) struct Signals;

#[cfg(not(unix))]
impl Signals {
    pub(super) fn listen() -> Result<Self> {
        Ok(Signals)
    }

    /// Waits for the next Ctrl-C; false when none can come any more.
    pub(super) async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

/// Set at the first signal; `train` and `sweep` hand it to the loop, which
/// stops at its next step.
pub static STOP_TRAINING: AtomicBool = AtomicBool::new(false);

/// Listens for the signals on a thread of its own while a training runs:
/// the first sets [`STOP_TRAINING`] (the loop ends its step and stops, with
/// what --resume continues from), the second exits at once (status 130, as
/// a shell reports Ctrl-C); the checkpoints on disk are whole either way.
pub fn stop_training_on_signals() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot listen for signals: {e}")))?;
    // Registered here, before training starts, so that none is missed.
    let mut signals = runtime.block_on(async { Signals::listen() })?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            while signals.next().await {
                if STOP_TRAINING.swap(true, Ordering::SeqCst) {
                    eprintln!("stopped at the second signal");
                    std::process::exit(130);
                }
                eprintln!("stopping after this step (Ctrl-C again to stop at once)");
            }
        })
    });
    Ok(())
}
