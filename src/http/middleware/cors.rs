//! CORS for browser clients (`[api.cors]`, off unless `allowed_origins` lists one).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! before routing and authentication (browsers send it without credentials): `204`, with the
//! allowed methods, headers and max-age when the origin is allowed, with no CORS headers when
//! it is not (the browser then refuses the real request). Every other response to an allowed
//! origin carries `Access-Control-Allow-Origin` (and the exposed headers); responses to other
//! origins carry none. `Vary: Origin` is set whenever the answer depends on the origin.

use crate::config::CorsSettings;
use crate::http::response::{empty, Resp};
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use hyper::{Method, Request, StatusCode};

/// The CORS policy.
pub struct Cors {
    settings: CorsSettings,
    methods: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
    max_age: HeaderValue,
}

fn joined(items: &[String]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl Cors {
    pub fn new(settings: CorsSettings) -> Self {
        Self {
            methods: joined(&settings.methods),
            exposed: joined(&settings.exposed),
            max_age: HeaderValue::from(settings.max_age.as_secs()),
            settings,
        }
    }

    /// The value of `Access-Control-Allow-Origin` for this request, when its origin is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match &self.settings.origins {
            // With credentials a browser refuses `*`: echo the origin instead.
            None if !self.settings.allow_credentials => Some(HeaderValue::from_static("*")),
            None => Some(origin.clone()),
            Some(list) => {
                let o = origin.to_str().ok()?;
                list.iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(o))
                    .then(|| origin.clone())
            }
        }
    }

    /// The answer to a preflight request; `None` for any other request.
    pub fn preflight<B>(&self, req: &Request<B>) -> Option<Resp> {
        let headers = req.headers();
        if req.method() != Method::OPTIONS
            || !headers.contains_key(ORIGIN)
            || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut resp = empty(StatusCode::NO_CONTENT);
        let out = resp.headers_mut();
        out.insert(
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        let Some(origin) = self.allow_origin(headers.get(ORIGIN)) else {
            return Some(resp);
        };
        let asked = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        if !self
            .settings
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(asked))
        {
            return Some(resp);
        }
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if let Some(m) = &self.methods {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        let allowed_headers = if self.settings.headers.iter().any(|h| h == "*") {
            // Any header: echo what the browser asks for.
            headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned()
        } else {
            joined(&self.settings.headers)
        };
        if let Some(h) = allowed_headers {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, h);
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.settings.allow_credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        Some(resp)
    }

    /// Adds the CORS headers of an actual (non-preflight) response to a request from `origin`.
    pub fn decorate(&self, origin: Option<&HeaderValue>, resp: &mut Resp) {
        let Some(allowed) = self.allow_origin(origin) else {
            if origin.is_some() && self.settings.origins.is_some() {
                resp.headers_mut()
                    .append(VARY, HeaderValue::from_static("Origin"));
            }
            return;
        };
        let out = resp.headers_mut();
        if allowed != "*" {
            out.append(VARY, HeaderValue::from_static("Origin"));
        }
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if let Some(e) = &self.exposed {
            out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        if self.settings.allow_credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}
