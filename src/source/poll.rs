//! Polling a URL source: one conditional GET (ETag / If-None-Match, Last-Modified /
//! If-Modified-Since) and the backoff between failed polls.

use std::time::Duration;

/// HTTP validators of the last good fetch.
#[derive(Debug, Default, Clone)]
pub(super) struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
    /// Not a validator: the source's `Cache-Control`, which the datafile mirror repeats.
    pub(super) cache_control: Option<String>,
}

/// What a fetch brought.
pub(super) enum Fetched {
    /// 304: the datafile in use is current.
    NotModified,
    /// A body, and the validators to send next time.
    Body {
        bytes: Vec<u8>,
        validators: Validators,
    },
}

/// Why a fetch failed.
pub(super) enum FetchFailure {
    /// The server answered with a status other than 2xx / 304.
    Status(reqwest::StatusCode),
    /// No answer (connection, timeout, body).
    Transport(String),
    /// The body is larger than `datafile.max_bytes` (reading stopped there).
    TooLarge,
}

/// GETs `url`, conditional on `validators`, with `Authorization: Bearer <token>` for a secure
/// environment; reads at most `max_bytes` of the body.
pub(super) async fn fetch(
    url: &url::Url,
    timeout: Duration,
    validators: &Validators,
    max_bytes: usize,
    token: Option<&crate::config::Secret>,
) -> Result<Fetched, FetchFailure> {
    let transport = |e: reqwest::Error| FetchFailure::Transport(e.to_string());
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(transport)?;
    let mut req = client.get(url.clone());
    if let Some(token) = token {
        let mut value =
            reqwest::header::HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(
                |_| FetchFailure::Transport("the access token is not a valid header".into()),
            )?;
        value.set_sensitive(true);
        req = req.header(reqwest::header::AUTHORIZATION, value);
    }
    if let Some(e) = &validators.etag {
        req = req.header("If-None-Match", e);
    }
    if let Some(m) = &validators.last_modified {
        req = req.header("If-Modified-Since", m);
    }
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        return Err(FetchFailure::Status(status));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let validators = Validators {
        etag: header("etag"),
        last_modified: header("last-modified"),
        cache_control: header("cache-control"),
    };
    if resp
        .content_length()
        .is_some_and(|len| len > max_bytes as u64)
    {
        return Err(FetchFailure::TooLarge);
    }
    let mut resp = resp;
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if bytes.len() + chunk.len() > max_bytes {
            return Err(FetchFailure::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body { bytes, validators })
}

/// Exponential backoff from 1 s, capped at the poll interval (at least 1 s).
pub(super) fn backoff(failures: u32, cap: Duration) -> Duration {
    let secs = 1u64 << failures.min(16);
    Duration::from_secs(secs).min(cap.max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1, Duration::from_secs(60)), Duration::from_secs(2));
        assert_eq!(backoff(3, Duration::from_secs(60)), Duration::from_secs(8));
        assert_eq!(
            backoff(30, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
