//! The one-shot commands behind the CLI: `check`, `datafile fetch`, `decide`.

use anyhow::{anyhow, bail, Context};
use bucketd::config::{DatafileOrigin, Settings, DEFAULT_DATAFILE_URL_TEMPLATE};
use bucketd::core::{DecideOptions, Decider, ProjectConfig, UserContext};
use bucketd::source::{write_atomically, BUNDLED_DATAFILE};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Duration;

/// Loads every project's datafile (source, else cache) and reports what was found.
pub async fn check_datafiles(settings: &Settings) -> anyhow::Result<Vec<String>> {
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
            DatafileOrigin::Url(url) => match fetch(url.as_str(), p.fetch_timeout).await {
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
            },
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
    Ok(lines)
}

async fn fetch(url: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let resp = client.get(url).send().await?;
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
    let bytes = fetch(&url, Duration::from_secs(30))
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
