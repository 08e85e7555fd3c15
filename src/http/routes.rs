//! The route table: every route's method, path, metric label and handler, in one place.
//!
//! A path with no route is a 404 labelled `other`; a known path asked with another method is a
//! 405 labelled with that path's route. (The query-length limit is checked before routing, see
//! [`crate::http::handle`].)

use super::error::ApiError;
use super::middleware::auth::{Access, KeyFrom};
use super::response::Resp;
use super::{agent, bucketer, ops, sdk, HttpState};
use crate::metrics::Route;
use hyper::body::Incoming;
use hyper::{Method, Request};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// A running handler.
pub type Pending = Pin<Box<dyn Future<Output = Result<Resp, ApiError>> + Send>>;

/// A handler: the state, the request and the peer's address in, a response or an error out.
pub type Handler = fn(Arc<HttpState>, Request<Incoming>, SocketAddr) -> Pending;

/// One route.
///
/// Its [`Access`] (whether `[api.auth]` applies) follows from its path, in one place
/// ([`RouteDef::access`]): a route added under `/v1/`, `/bucketer` or `/datafiles/` needs a
/// token when auth is on without declaring anything.
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    /// The `route` label of `bucketd_http_requests_total`.
    pub label: Route,
    pub handler: Handler,
}

impl RouteDef {
    /// What the route asks of its callers when `[api.auth]` is on.
    pub fn access(&self) -> Access {
        access_of(self.path)
    }
}

/// The path-class rule behind [`RouteDef::access`].
pub fn access_of(path: &str) -> Access {
    if path.starts_with("/datafiles/") {
        Access::Token(KeyFrom::DatafilePath)
    } else if path.starts_with("/v1/") || path == "/bucketer" {
        Access::Token(KeyFrom::Header)
    } else {
        Access::Open
    }
}

/// Every route the daemon serves.
pub static ROUTES: [RouteDef; 22] = [
    RouteDef {
        method: Method::GET,
        path: "/bucketer",
        label: Route::Bucketer,
        handler: |s, r, peer| Box::pin(async move { bucketer::bucketer(&s, r, peer).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/decide",
        label: Route::Decide,
        handler: |s, r, _| Box::pin(async move { agent::decide::decide(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/activate",
        label: Route::Activate,
        handler: |s, r, _| Box::pin(async move { agent::activate::activate(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/track",
        label: Route::Track,
        handler: |s, r, _| Box::pin(async move { agent::track::track(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/override",
        label: Route::Override,
        handler: |s, r, _| {
            Box::pin(async move { agent::overrides::override_variation(&s, r).await })
        },
    },
    RouteDef {
        method: Method::GET,
        path: "/v1/config",
        label: Route::Config,
        handler: |s, r, _| Box::pin(async move { agent::config::config(&s, r).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/v1/datafile",
        label: Route::Datafile,
        handler: |s, r, _| Box::pin(async move { agent::config::datafile(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/lookup",
        label: Route::Lookup,
        handler: |s, r, _| Box::pin(async move { agent::profiles::lookup(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/save",
        label: Route::Save,
        handler: |s, r, _| Box::pin(async move { agent::profiles::save(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/batch",
        label: Route::Batch,
        handler: |s, r, peer| Box::pin(async move { agent::batch::batch(&s, r, peer).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/reset",
        label: Route::Reset,
        handler: |s, r, _| Box::pin(async move { agent::reset::reset(&s, r).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/v1/notifications/event-stream",
        label: Route::Notifications,
        handler: |s, r, _| Box::pin(async move { agent::notifications::event_stream(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/send-odp-event",
        label: Route::SendOdpEvent,
        handler: |s, r, _| Box::pin(async move { agent::odp::send_odp_event(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/webhooks/optimizely",
        label: Route::Webhook,
        handler: |s, r, _| Box::pin(async move { ops::webhook::webhook(&s, r).await }),
    },
    RouteDef {
        method: Method::PUT,
        path: "/admin/datafile",
        label: Route::AdminDatafile,
        handler: |s, r, _| Box::pin(async move { ops::admin::push_datafile(&s, r).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/health",
        label: Route::Health,
        handler: |s, _, _| Box::pin(async move { ops::health::health(&s).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/ready",
        label: Route::Ready,
        handler: |s, _, _| Box::pin(async move { ops::health::ready(&s).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/metrics",
        label: Route::Metrics,
        handler: |s, _, _| Box::pin(async move { ops::metrics::metrics(&s).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/events",
        label: Route::Events,
        handler: |s, r, _| Box::pin(async move { sdk::events(&s, r).await }),
    },
    RouteDef {
        method: Method::POST,
        path: "/oauth/token",
        label: Route::OAuthToken,
        handler: |s, r, _| Box::pin(async move { ops::oauth::token(&s, r).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/datafiles/*",
        label: Route::DatafileMirror,
        handler: |s, r, _| Box::pin(async move { sdk::datafiles::datafile(&s, r).await }),
    },
    RouteDef {
        method: Method::GET,
        path: "/openapi.json",
        label: Route::OpenApi,
        handler: |_, _, _| Box::pin(async move { Ok(ops::openapi::document()) }),
    },
];

/// Whether a route's path (exact, or a prefix ending in `*`) matches the request's.
fn matches(route: &str, path: &str) -> bool {
    match route.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => route == path,
    }
}

/// Where a request goes: its route, or the error and label of a miss.
fn find(method: &Method, path: &str) -> Result<&'static RouteDef, (Route, ApiError)> {
    let mut same_path = None;
    for route in &ROUTES {
        if matches(route.path, path) {
            if route.method == method {
                return Ok(route);
            }
            same_path.get_or_insert(route.label);
        }
    }
    Err(match same_path {
        Some(label) => (label, ApiError::MethodNotAllowed(method.to_string())),
        None => (
            Route::Other,
            ApiError::NotFound(format!("no route for {path}")),
        ),
    })
}

/// Runs the request's handler; returns the metric label with the outcome.
pub async fn dispatch(
    state: Arc<HttpState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (Route, Result<Resp, ApiError>) {
    match find(req.method(), req.uri().path()) {
        Ok(route) => {
            if let Err(refused) = state.authorize(&req, route.access()).await {
                return (route.label, Ok(refused.response()));
            }
            // An on-demand project a request names is loaded (shared fetch, bounded wait)
            // before its handler pins it.
            if let Some(key) = super::params::sdk_key(&req) {
                if let Err(e) = state.service.prepare(&key).await {
                    return (route.label, Err(e.into()));
                }
            }
            (route.label, (route.handler)(state, req, peer).await)
        }
        Err((label, e)) => (label, Err(e)),
    }
}

/// The metric label of a path (any method), for answers given before routing (preflights).
pub fn label_of(path: &str) -> Route {
    ROUTES
        .iter()
        .find(|r| r.path == path)
        .map_or(Route::Other, |r| r.label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_declared_once_with_its_own_label() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.path != b.path || a.method != b.method,
                    "{} {} twice",
                    a.method,
                    a.path
                );
                assert_ne!(a.label, b.label, "{} and {} share a label", a.path, b.path);
            }
            assert_ne!(a.label, Route::Other, "{} is labelled other", a.path);
        }
        let labels: Vec<Route> = ROUTES.iter().map(|r| r.label).collect();
        for r in Route::ALL {
            assert!(
                r == Route::Other || labels.contains(&r),
                "metric label {} has no route",
                r.name()
            );
        }
    }

    #[test]
    fn the_api_needs_a_token_and_operations_do_not() {
        let token: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.access() != Access::Open)
            .map(|r| r.path)
            .collect();
        assert!(token.contains(&"/bucketer") && token.contains(&"/v1/decide"));
        for open in [
            "/health",
            "/ready",
            "/metrics",
            "/oauth/token",
            "/admin/datafile",
        ] {
            assert!(!token.contains(&open), "{open} needs no API token");
        }
        assert_eq!(
            access_of("/datafiles/k.json"),
            Access::Token(KeyFrom::DatafilePath)
        );
    }

    #[test]
    fn misses_are_404_or_405() {
        assert!(find(&Method::GET, "/bucketer").is_ok());
        let Err((label, e)) = find(&Method::DELETE, "/bucketer") else {
            panic!("DELETE /bucketer has no route");
        };
        assert_eq!((label, e.status().as_u16()), (Route::Bucketer, 405));
        let Err((label, e)) = find(&Method::GET, "/nope") else {
            panic!("/nope has no route");
        };
        assert_eq!((label, e.status().as_u16()), (Route::Other, 404));
        assert_eq!(e.to_string(), "no route for /nope");
    }
}
