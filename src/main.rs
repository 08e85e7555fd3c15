//! The `bucketd` binary: parses the command line, loads config, sets up logging, builds the
//! configured backends and runs the chosen command. Everything else lives in the library.

mod cli;

use anyhow::Context;
use bucketd::config::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: glibc malloc's arena locks showed up as the top cost under load (requests and the
/// event producer allocate on different threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit code for an invalid datafile (sysexits `EX_DATAERR`).
const EX_DATAERR: u8 = 65;

#[derive(Parser)]
#[command(
    name = "bucketd",
    version,
    about = "Optimizely Feature Experimentation decisions as a daemon"
)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Validate the configuration and every project's datafile, then exit.
    Check,
    /// Run only the flusher: drain the event queue into bulk event requests.
    Flush,
    /// Datafile tools.
    Datafile {
        #[command(subcommand)]
        command: DatafileCommand,
    },
    /// Print one decision for a datafile, user and attributes (no daemon needed).
    Decide {
        #[arg(long)]
        datafile: PathBuf,
        #[arg(long, conflicts_with = "flag", required_unless_present = "flag")]
        experiment: Option<String>,
        #[arg(long)]
        flag: Option<String>,
        #[arg(long)]
        user: String,
        /// Attributes as a JSON object.
        #[arg(long)]
        attrs: Option<String>,
    },
}

#[derive(Subcommand)]
enum DatafileCommand {
    /// Download a datafile (validated before it is written).
    Fetch {
        #[arg(long, conflicts_with = "sdk_key", required_unless_present = "sdk_key")]
        url: Option<String>,
        #[arg(long)]
        sdk_key: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bucketd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = match config::load_from_process_env(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("bucketd: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            init_logging(settings.log_format, &settings.log_level);
            match serve(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "bucketd failed");
                    eprintln!("bucketd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check => check(cli.config).await,
        Command::Flush => {
            let settings = match config::load_from_process_env(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("bucketd: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            init_logging(settings.log_format, &settings.log_level);
            match flush(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "flusher failed");
                    eprintln!("bucketd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Datafile {
            command: DatafileCommand::Fetch { url, sdk_key, out },
        } => report(cli::fetch_datafile(url, sdk_key, &out).await),
        Command::Decide {
            datafile,
            experiment,
            flag,
            user,
            attrs,
        } => {
            match cli::decide(
                &datafile,
                experiment.as_deref(),
                flag.as_deref(),
                &user,
                attrs.as_deref(),
            ) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bucketd: {e:#}");
                    ExitCode::from(EX_DATAERR)
                }
            }
        }
    }
}

fn report(r: anyhow::Result<String>) -> ExitCode {
    match r {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bucketd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(file: Option<PathBuf>) -> ExitCode {
    let settings = match config::load_from_process_env(file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bucketd: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli::check_datafiles(&settings).await {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bucketd: {e:#}");
            ExitCode::from(EX_DATAERR)
        }
    }
}

/// A token cancelled on SIGTERM / SIGINT.
fn on_termination() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        } else {
            tracing::error!("cannot install signal handlers");
            return;
        }
        tracing::info!("shutdown requested");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        t.cancel();
    });
    token
}

async fn flush(settings: config::Settings) -> anyhow::Result<()> {
    let queue = settings.events.queue.build().await.context("event queue")?;
    let metrics = std::sync::Arc::new(bucketd::metrics::Metrics::new());
    let cancel = on_termination();
    if let Some(addr) = settings.flusher.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("flusher.metrics_listen: cannot listen on {addr}"))?;
        tracing::info!(%addr, "flusher metrics and health at /metrics, /health");
        let status = std::sync::Arc::new(bucketd::http::status::Status {
            metrics: metrics.clone(),
            queue: queue.clone(),
        });
        tokio::spawn(bucketd::http::status::serve(
            listener,
            status,
            cancel.clone(),
        ));
    }
    let flusher = bucketd::pipeline::Flusher::new(
        queue,
        settings.flusher.clone(),
        settings.events.endpoint.clone(),
        metrics,
    )?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!("flusher running");
    let grace = settings.server.shutdown_grace;
    let run = tokio::spawn(flusher.run(cancel.clone()));
    cancel.cancelled().await;
    if tokio::time::timeout(grace, run).await.is_err() {
        tracing::error!(?grace, "flusher did not stop within the grace period");
    }
    Ok(())
}

async fn serve(settings: config::Settings) -> anyhow::Result<()> {
    let store = settings
        .profiles
        .store
        .build()
        .await
        .context("profile store")?;
    let queue = settings.events.queue.build().await.context("event queue")?;
    let spool = match &settings.events.spool {
        Some(c) => Some(c.build().await.context("event spool")?),
        None => None,
    };
    let daemon = bucketd::daemon::Daemon::start(&settings, store, queue, spool).await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let shutdown = daemon.shutdown.clone();
    let service = daemon.service.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: re-reading datafiles");
                    for p in &service.projects {
                        p.request_refresh();
                    }
                }
            }
        }
        tracing::info!("shutdown requested");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        shutdown.cancel();
    });
    daemon.wait().await;
    Ok(())
}
