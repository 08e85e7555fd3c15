//! The daemon as its own process (`CARGO_BIN_EXE_bucketd serve`), for tests that kill it,
//! restart it, or run it under limits: the base command, readiness, and a guard that kills it.

use super::sink::Sink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `[wrapper…] bucketd [--config config] subcommand` with its state in `dir`, logging
/// warnings, its stdout discarded. `wrapper` runs the binary under another program (e.g.
/// `["prlimit", "--nofile=128:128"]`).
pub fn bucketd(wrapper: &[&str], config: Option<&Path>, subcommand: &str, dir: &Path) -> Command {
    let bin = env!("CARGO_BIN_EXE_bucketd");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    if let Some(f) = config {
        cmd.arg("--config").arg(f);
    }
    cmd.arg(subcommand)
        .env("BUCKETD__STATE_DIR", dir)
        .env("BUCKETD__LOG__LEVEL", "warn")
        .stdout(Stdio::null());
    cmd
}

/// `bucketd serve` on `127.0.0.1:port` (see [`bucketd`]), its flusher off and its endpoint a
/// closed port (turn the flusher on with [`flush_to`]).
pub fn serve_command_with(
    wrapper: &[&str],
    config: Option<&Path>,
    dir: &Path,
    port: u16,
) -> Command {
    let mut cmd = bucketd(wrapper, config, "serve", dir);
    cmd.env("BUCKETD__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("BUCKETD__FLUSHER__ENABLED", "false")
        .env("BUCKETD__EVENTS__ENDPOINT", "http://127.0.0.1:9/v1/events");
    cmd
}

/// [`serve_command_with`] without wrapper or config file.
pub fn serve_command(dir: &Path, port: u16) -> Command {
    serve_command_with(&[], None, dir, port)
}

/// Turns the embedded flusher on, posting to `sink`.
pub fn flush_to<'a>(cmd: &'a mut Command, sink: &Sink) -> &'a mut Command {
    cmd.env("BUCKETD__FLUSHER__ENABLED", "true")
        .env("BUCKETD__EVENTS__ENDPOINT", sink.url())
}

/// Waits until `GET {base}/ready` answers 2xx (20 s at most).
pub async fn wait_ready(base: &str) {
    let c = reqwest::Client::new();
    for _ in 0..400 {
        if c.get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon at {base} never became ready");
}

/// A daemon process killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct Daemon {
    pub child: Child,
    pub base: String,
}

impl Daemon {
    /// Spawns `cmd` (listening on `port`) and waits until it is ready.
    pub async fn start(cmd: &mut Command, port: u16) -> Self {
        let child = cmd.spawn().unwrap();
        let daemon = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_ready(&daemon.base).await;
        daemon
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
