//! The one startup path, shared by `bucketd serve`, `bucketd flush` and the integration tests:
//! [`App::build`] builds the configured backends and then either the daemon (projects and their
//! datafile refreshers, the profile gateway, the event producer, the embedded flusher, the HTTP
//! API) or the flush-only mode (the flusher and its status endpoint); [`App::run`] serves until
//! the shutdown future completes, then stops in order within the grace period: stop accepting →
//! finish requests → workers drain (queued events handed to the queue, pending profile saves
//! written, batches in flight delivered or released).
//!
//! This is the only module that assembles the other layers, so the calls into `http`, the
//! flusher and the event producer are all here.

use crate::config::Settings;
use crate::http::ops::status::Status;
use crate::http::{HttpConfig, HttpState};
use crate::metrics::Metrics;
use crate::pipeline::{self, Flusher, FlusherError};
use crate::service::{cmab::CmabService, profiles::ProfileGateway, Service};
use crate::signal::Reloads;
use crate::source::Project;
use backends::{BackendError, EventQueue};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What [`App::build`] assembles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: the HTTP API, plus the flusher when `flusher.enabled`.
    Serve,
    /// Only the flusher (`bucketd flush`), with `/metrics` and `/health` on
    /// `flusher.metrics_listen`.
    Flush,
}

/// Why bucketd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("profile store")]
    ProfileStore(#[source] BackendError),
    #[error("event queue")]
    EventQueue(#[source] BackendError),
    #[error("event spool")]
    Spool(#[source] BackendError),
    #[error("{key}cannot listen on {addr}: {source}")]
    Listen {
        /// The config key to blame, with its separator (empty for `server.listen`, as before).
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("flusher: {0}")]
    Flusher(FlusherError),
    #[error(transparent)]
    Cmab(#[from] crate::service::cmab::CmabSetupError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::http::tls::TlsError),
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Fanout(#[from] crate::service::fanout::FanoutError),
    #[error("project {project}: no datafile (source unavailable and no cached copy): {message}")]
    NoDatafile { project: String, message: String },
}

/// A built daemon or flusher, not serving yet.
pub struct App {
    mode: Mode,
    grace: Duration,
    /// Re-read on SIGHUP (none in flush mode).
    projects: Vec<Arc<Project>>,
    /// The listener's certificate, re-read on SIGHUP too.
    tls: Option<Arc<crate::http::tls::Tls>>,
    /// Background work that drains after the server has stopped.
    workers: TaskTracker,
    workers_cancel: CancellationToken,
    server: Server,
}

/// The listener `run` serves on.
enum Server {
    Api(TcpListener, SocketAddr, Arc<HttpState>),
    Status(TcpListener, SocketAddr, Arc<Status>),
    None,
}

impl App {
    /// Builds the backends and the chosen mode, binds the listener and starts the background
    /// workers. Fails when a backend cannot be built, the address is taken, or (serve) a project
    /// has neither a reachable source nor a cached datafile.
    pub async fn build(settings: Settings, mode: Mode) -> Result<Self, StartError> {
        let queue = settings
            .events
            .queue
            .build()
            .await
            .map_err(StartError::EventQueue)?;
        match mode {
            Mode::Serve => Self::daemon(settings, queue).await,
            Mode::Flush => Self::flush_only(settings, queue).await,
        }
    }

    async fn daemon(settings: Settings, queue: Arc<dyn EventQueue>) -> Result<Self, StartError> {
        let store = settings
            .profiles
            .store
            .build()
            .await
            .map_err(StartError::ProfileStore)?;
        let spool = match &settings.events.spool {
            Some(c) => Some(c.build().await.map_err(StartError::Spool)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.up.set(1.0);
        let workers = TaskTracker::new();
        let workers_cancel = CancellationToken::new();

        let mut projects = Vec::new();
        for p in &settings.projects {
            let project = Arc::new(Project::new(p.clone(), metrics.clone()));
            project
                .load_at_start()
                .await
                .map_err(|e| StartError::NoDatafile {
                    project: p.name.clone(),
                    message: e.to_string(),
                })?;
            workers.spawn(project.clone().run(workers_cancel.clone()));
            projects.push(project);
        }

        let gateway = ProfileGateway::new(
            store,
            &settings.profiles,
            metrics.clone(),
            &workers,
            workers_cancel.clone(),
        );
        if settings.flusher.enabled {
            let flusher = Flusher::new(
                queue.clone(),
                settings.flusher.clone(),
                settings.events.endpoint.clone(),
                metrics.clone(),
            )
            .map_err(StartError::Flusher)?;
            workers.spawn(flusher.run(workers_cancel.clone()));
        }
        let channel = pipeline::ChannelSettings {
            capacity: settings.events.channel_capacity,
            max_bytes: settings.events.channel_max_bytes,
            ack: settings.events.ack,
            ack_timeout: settings.events.ack_timeout,
        };
        let (sink, producer) = pipeline::producer(
            queue,
            spool,
            channel,
            metrics.clone(),
            workers_cancel.clone(),
        );
        workers.spawn(producer);
        let dynamic = crate::service::dynamic::DynamicProjects::new(
            settings.dynamic_projects.clone(),
            settings.state_dir.clone(),
            projects.len(),
            metrics.clone(),
            workers.clone(),
            workers_cancel.clone(),
        );
        #[cfg(feature = "redis")]
        if let Some(fanout) = &settings.fanout {
            let targets = crate::service::fanout::Targets {
                configured: projects.clone(),
                dynamic: Some(dynamic.clone()),
            };
            crate::service::fanout::start(
                fanout,
                targets,
                metrics.clone(),
                &workers,
                workers_cancel.clone(),
            )?;
        }
        let service = Arc::new(
            Service::new(
                projects.clone(),
                gateway,
                sink,
                metrics,
                settings.enable_overrides,
            )
            .with_notifier(notifier(&settings.agent_api))
            .with_odp(settings.odp.clone())
            .with_cmab(Arc::new(CmabService::from_settings(&settings.cmab)?))
            .with_dynamic(dynamic),
        );

        let tls = match &settings.server.tls {
            Some(t) => Some(crate::http::tls::Tls::new(t.clone())?),
            None => None,
        };
        let (listener, addr) = bind("", settings.server.listen).await?;
        let http = Arc::new(HttpState::new(
            service,
            HttpConfig {
                trust_forwarded_for: settings.server.trust_forwarded_for,
                max_body_bytes: settings.server.max_body_bytes,
                max_query_bytes: settings.server.max_query_bytes,
                max_attributes: settings.server.max_attributes,
                header_read_timeout: settings.server.header_read_timeout,
                max_datafile_bytes: settings
                    .projects
                    .iter()
                    .map(|p| p.max_bytes)
                    .max()
                    .unwrap_or(0),
                admin_token: settings.admin_token.clone(),
                agent_api: settings.agent_api.clone(),
                relay: settings.events.relay,
                connections: crate::http::ConnectionLimits {
                    max_connections: settings.server.max_connections,
                    idle_timeout: settings.server.idle_timeout,
                    http2_max_concurrent_streams: settings.server.http2_max_concurrent_streams,
                    http2_max_header_list_bytes: settings.server.http2_max_header_list_bytes,
                    http2_keep_alive_interval: settings.server.http2_keep_alive_interval,
                    http2_keep_alive_timeout: settings.server.http2_keep_alive_timeout,
                },
                auth: settings.auth.clone(),
                cors: settings.cors.clone(),
                tls: tls.clone(),
            },
        ));
        if let Some(jwks) = http.jwks() {
            workers.spawn(jwks.run(workers_cancel.clone()));
        }
        Ok(Self {
            mode: Mode::Serve,
            grace: settings.server.shutdown_grace,
            projects,
            tls,
            workers,
            workers_cancel,
            server: Server::Api(listener, addr, http),
        })
    }

    async fn flush_only(
        settings: Settings,
        queue: Arc<dyn EventQueue>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let server = match settings.flusher.metrics_listen {
            Some(listen) => {
                let (listener, addr) = bind("flusher.metrics_listen: ", listen).await?;
                let status = Arc::new(Status {
                    metrics: metrics.clone(),
                    queue: queue.clone(),
                });
                Server::Status(listener, addr, status)
            }
            None => Server::None,
        };
        let flusher = Flusher::new(
            queue,
            settings.flusher.clone(),
            settings.events.endpoint.clone(),
            metrics,
        )
        .map_err(StartError::Flusher)?;
        let workers = TaskTracker::new();
        let workers_cancel = CancellationToken::new();
        workers.spawn(flusher.run(workers_cancel.clone()));
        Ok(Self {
            mode: Mode::Flush,
            grace: settings.server.shutdown_grace,
            projects: Vec::new(),
            tls: None,
            workers,
            workers_cancel,
            server,
        })
    }

    /// The API address (serve), or the status endpoint's (flush; `None` when it has none).
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.server {
            Server::Api(_, addr, _) | Server::Status(_, addr, _) => Some(*addr),
            Server::None => None,
        }
    }

    /// Serves until `shutdown` completes, re-reading every project's datafile on each reload
    /// request, then stops in order within `server.shutdown_grace`. Tells systemd READY once
    /// serving and STOPPING when shutdown begins (a no-op outside systemd).
    pub async fn run(self, shutdown: impl Future<Output = ()>, mut reloads: Reloads) {
        let stop = CancellationToken::new();
        let server = match self.server {
            Server::Api(listener, addr, http) => {
                let server = crate::http::serve(listener, http, stop.clone(), self.grace);
                let server = tokio::spawn(server);
                tracing::info!(%addr, projects = self.projects.len(), "bucketd listening");
                Some(server)
            }
            Server::Status(listener, addr, status) => {
                let server = crate::http::ops::status::serve(listener, status, stop.clone());
                let server = tokio::spawn(server);
                tracing::info!(%addr, "flusher metrics and health at /metrics, /health");
                Some(server)
            }
            Server::None => None,
        };
        notify_systemd(sd_notify::NotifyState::Ready);
        if self.mode == Mode::Flush {
            tracing::info!("flusher running");
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = reloads.next() => {
                    tracing::info!("SIGHUP: re-reading datafiles");
                    for p in &self.projects {
                        p.request_refresh();
                    }
                    if let Some(tls) = &self.tls {
                        // A failure is logged; the current certificate stays.
                        let _ = tls.reload();
                    }
                }
            }
        }
        tracing::info!("shutdown requested");
        notify_systemd(sd_notify::NotifyState::Stopping);

        stop.cancel();
        let deadline = tokio::time::Instant::now() + self.grace;
        if let Some(server) = server {
            let _ = tokio::time::timeout_at(deadline, server).await;
        }
        self.workers_cancel.cancel();
        self.workers.close();
        if tokio::time::timeout_at(deadline, self.workers.wait())
            .await
            .is_err()
        {
            tracing::error!(grace = ?self.grace, "shutdown grace period over with work still pending");
        }
        tracing::info!("bucketd stopped");
    }
}

async fn bind(
    key: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen_error = |source| StartError::Listen { key, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local))
}

/// Best effort: outside systemd there is no notify socket and this does nothing.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    let _ = sd_notify::notify(false, &[state]);
}

/// The notification channel `[api.notifications]` asks for (none when off).
fn notifier(api: &crate::config::AgentApiSettings) -> crate::notify::Notifier {
    if api.notifications_enabled {
        crate::notify::Notifier::new(api.notifications_buffer, api.notifications_max_subscribers)
    } else {
        crate::notify::Notifier::disabled()
    }
}
