//! The process signals bucketd answers, as values: shutdown (SIGTERM or SIGINT) is a future,
//! SIGHUP a stream of reload requests. Handlers are installed when these are created, so create
//! them once the daemon is built (a signal during start keeps its default action and ends the
//! process at once), and before telling systemd it is ready.
//!
//! Tests pass their own shutdown future and [`Reloads::never`] instead.

use std::future::Future;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A future that completes on the first SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C).
pub fn shutdown() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// SIGHUP as a stream of "re-read the datafiles" requests.
pub struct Reloads(Option<Signal>);

impl Reloads {
    /// Reload requests from SIGHUP (`systemctl reload`).
    pub fn sighup() -> std::io::Result<Self> {
        signal(SignalKind::hangup()).map(|s| Self(Some(s)))
    }

    /// A stream that never yields, for callers without signals (tests, the flush-only mode).
    pub fn never() -> Self {
        Self(None)
    }

    /// The next reload request; `None` once no more can come.
    pub async fn next(&mut self) -> Option<()> {
        match &mut self.0 {
            Some(hup) => hup.recv().await,
            None => std::future::pending().await,
        }
    }
}
