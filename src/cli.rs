//! The command line, and the one-shot commands behind it: `check`, `datafile fetch`, `decide`.

use anyhow::{anyhow, bail, Context};
use bucketd::config::{DatafileOrigin, Settings, DEFAULT_DATAFILE_URL_TEMPLATE};
use bucketd::core::{DecideOptions, Decider, ProjectConfig, UserContext};
use bucketd::source::{write_atomically, BUNDLED_DATAFILE};
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for an invalid datafile (sysexits `EX_DATAERR`).
pub const EX_DATAERR: u8 = 65;

#[derive(Parser)]
#[command(
    name = "bucketd",
    version,
    about = "Optimizely Feature Experimentation decisions as a daemon"
)]
pub struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// API authentication helpers.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
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
pub enum AuthCommand {
    /// Print a new random client secret and the `secret_hash` for `[[api.auth.clients]]`
    /// (the Optimizely Agent's format: base64 secret, base64 of its bcrypt hash).
    Client,
    /// Print a new random HS256 key for `api.auth.hmac_secrets`.
    HmacSecret,
    /// Print a new random static API token and the `sha256` for `[[api.auth.tokens]]`.
    Token,
}

#[derive(Subcommand)]
pub enum DatafileCommand {
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

/// Runs the commands that need no configuration (`datafile fetch`, `decide`); hands the others
/// back.
pub async fn without_config(command: Command) -> ControlFlow<ExitCode, Command> {
    ControlFlow::Break(match command {
        Command::Datafile {
            command: DatafileCommand::Fetch { url, sdk_key, out },
        } => report(fetch_datafile(url, sdk_key, &out).await, ExitCode::FAILURE),
        Command::Decide {
            datafile,
            experiment,
            flag,
            user,
            attrs,
        } => {
            let (experiment, flag, attrs) =
                (experiment.as_deref(), flag.as_deref(), attrs.as_deref());
            report(
                decide(&datafile, experiment, flag, &user, attrs),
                ExitCode::from(EX_DATAERR),
            )
        }
        Command::Auth { command } => report(auth_helper(command), ExitCode::FAILURE),
        command => return ControlFlow::Continue(command),
    })
}

/// Prints a one-shot command's answer, or its error and exits with `failure`.
pub fn report(answer: anyhow::Result<String>, failure: ExitCode) -> ExitCode {
    match answer {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bucketd: {e:#}");
            failure
        }
    }
}

/// `bucketd check` (the configuration is valid already): loads every project's datafile
/// (source, else cache) and reports what was found, one line per project.
pub async fn check(settings: &Settings) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    for p in &settings.projects {
        let (bytes, from) = match &p.origin {
            DatafileOrigin::Bundled => (
                BUNDLED_DATAFILE.as_bytes().to_vec(),
                "bundled example".to_string(),
            ),
            DatafileOrigin::File(path) => (
                tokio::fs::read(path)
                    .await
                    .with_context(|| format!("project {}: {}", p.name, path.display()))?,
                path.display().to_string(),
            ),
            DatafileOrigin::Url(url) => {
                match fetch(url.as_str(), p.fetch_timeout, p.access_token.as_ref()).await {
                    Ok(b) => (b, url.to_string()),
                    Err(e) => match tokio::fs::read(&p.cache_path).await {
                        Ok(b) => (
                            b,
                            format!("cache {} ({url} unreachable: {e})", p.cache_path.display()),
                        ),
                        Err(_) => bail!(
                            "project {}: {url} unreachable ({e}) and no cached datafile",
                            p.name
                        ),
                    },
                }
            }
        };
        let config =
            ProjectConfig::parse(&bytes).map_err(|e| anyhow!("project {}: {e}", p.name))?;
        lines.push(format!(
            "project {}: revision {} from {from} ({} experiments, {} flags)",
            p.name,
            config.revision,
            config.experiment_count(),
            config.flags.len()
        ));
    }
    lines.push("configuration OK".to_string());
    Ok(lines.join("\n"))
}

async fn fetch(
    url: &str,
    timeout: Duration,
    token: Option<&crate::config::Secret>,
) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let mut req = client.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token.expose());
    }
    let resp = req.send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    Ok(resp.bytes().await?.to_vec())
}

/// `bucketd datafile fetch`: downloads, validates, writes atomically.
pub async fn fetch_datafile(
    url: Option<String>,
    sdk_key: Option<String>,
    out: &Path,
) -> anyhow::Result<String> {
    let url = match (url, sdk_key) {
        (Some(u), _) => u,
        (None, Some(k)) => DEFAULT_DATAFILE_URL_TEMPLATE.replace("{sdk_key}", &k),
        (None, None) => bail!("give --url or --sdk-key"),
    };
    let bytes = fetch(&url, Duration::from_secs(30), None)
        .await
        .with_context(|| format!("fetching {url}"))?;
    let config = ProjectConfig::parse(&bytes).map_err(|e| anyhow!("{url}: {e}"))?;
    write_atomically(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!(
        "wrote {} (revision {})",
        out.display(),
        config.revision
    ))
}

/// `bucketd auth ...`: new secrets and their hashes.
fn auth_helper(command: AuthCommand) -> anyhow::Result<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let random = || {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(16) {
            chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        bytes
    };
    Ok(match command {
        AuthCommand::Client => {
            let secret = random();
            let hash = bcrypt::hash(secret, 12)?;
            format!(
                "client_secret = {}\nsecret_hash = \"{}\"",
                b64.encode(secret),
                b64.encode(hash)
            )
        }
        AuthCommand::HmacSecret => format!("hmac_secrets = [\"{}\"]", b64.encode(random())),
        AuthCommand::Token => {
            use sha2::Digest;
            let token = hex::encode(random());
            let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
            format!("token = {token}\nsha256 = \"{digest}\"")
        }
    })
}

/// `bucketd decide`: one decision as JSON.
pub fn decide(
    datafile: &Path,
    experiment: Option<&str>,
    flag: Option<&str>,
    user: &str,
    attrs: Option<&str>,
) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(datafile).with_context(|| format!("reading {}", datafile.display()))?;
    let config = ProjectConfig::parse(&bytes)?;
    let attributes: Map<String, Value> = match attrs {
        Some(a) => match serde_json::from_str(a).context("--attrs must be a JSON object")? {
            Value::Object(m) => m,
            _ => bail!("--attrs must be a JSON object"),
        },
        None => Map::new(),
    };
    let user = UserContext::new(user, attributes);
    let decider = Decider::new(&config, &user);
    let out = if let Some(key) = experiment {
        let idx = config
            .experiment_by_key(key)
            .ok_or_else(|| anyhow!("unknown experiment key {key:?}"))?;
        let v = decider.variation(idx, None).decision.variation;
        json!({
            "experiment_key": key,
            "user_id": user.user_id,
            "variation_key": v.map(|v| config.experiments[idx].variations[v].key.clone()),
        })
    } else if let Some(key) = flag {
        config
            .flag_by_key(key)
            .ok_or_else(|| anyhow!("unknown flag key {key:?}"))?;
        let options = DecideOptions {
            disable_decision_event: true,
            ..DecideOptions::default()
        };
        let d = decider
            .decide(Some(&[key]), options, None, &mut || (String::new(), 0))
            .decision
            .pop()
            .ok_or_else(|| anyhow!("no decision"))?;
        json!({
            "flag_key": d.flag_key,
            "user_id": user.user_id,
            "enabled": d.enabled,
            "variation_key": d.variation_key,
            "rule_key": d.rule_key,
            "variables": d.variables,
        })
    } else {
        bail!("give --experiment or --flag");
    };
    Ok(serde_json::to_string_pretty(&out)?)
}
