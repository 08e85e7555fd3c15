//! The `bucketd` binary: parses the command line, loads the configuration once, sets up logging
//! and runs the chosen command. Everything else lives in the library ([`bucketd::app`]).

mod cli;

use bucketd::app::{App, Mode};
use bucketd::config::{self, Settings};
use bucketd::signal;
use clap::Parser;
use cli::{Cli, Command};
use std::ops::ControlFlow;
use std::process::ExitCode;

/// mimalloc: glibc malloc's arena locks showed up as the top cost under load (requests and the
/// event producer allocate on different threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h; the Rust binding
/// names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS at once instead of after mimalloc's default delay (1 s in
/// v3): under load the delayed purges never caught up and RSS settled ~35 MB higher (README,
/// Performance). `MIMALLOC_PURGE_DELAY` in the environment still decides when set. (mimalloc
/// reads every option at process start, before `main`, so only `mi_option_set` takes effect
/// here, not `mi_option_set_default`.)
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a documented mimalloc option by value; it takes no pointers.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Exit code for a configuration error (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("bucketd: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let command = match cli::without_config(cli.command.unwrap_or(Command::Serve)).await {
        ControlFlow::Break(exit) => return exit,
        ControlFlow::Continue(command) => command,
    };
    let settings = match config::load_from_process_env(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bucketd: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let mode = match command {
        Command::Check => {
            return cli::report(cli::check(&settings).await, ExitCode::from(cli::EX_DATAERR))
        }
        Command::Flush => Mode::Flush,
        _ => Mode::Serve,
    };
    init_logging(&settings);
    if let Err(e) = serve(settings, mode).await {
        tracing::error!(?mode, error = format!("{e:#}"), "bucketd failed");
        eprintln!("bucketd: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Builds, then serves until SIGTERM / SIGINT; SIGHUP re-reads the datafiles (serve only: the
/// flusher has none, and keeps SIGHUP's default action).
async fn serve(settings: Settings, mode: Mode) -> anyhow::Result<()> {
    let app = App::build(settings, mode).await?;
    let reloads = match mode {
        Mode::Serve => signal::Reloads::sighup()?,
        Mode::Flush => signal::Reloads::never(),
    };
    app.run(signal::shutdown()?, reloads).await;
    Ok(())
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Human => builder.init(),
    }
}
