//! Assembles a running daemon from validated settings and built backends: projects and their
//! datafile refreshers, the profile gateway, the event producer, the HTTP server, and the
//! shutdown sequence (stop accepting → finish requests → hand queued events to the queue).

use crate::config::Settings;
use crate::http::{App, HttpConfig};
use crate::metrics::Metrics;
use crate::pipeline::{self, Flusher};
use crate::service::{profiles::ProfileGateway, Service};
use crate::source::Project;
use backends::{EventQueue, ProfileStore};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A started daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    /// Cancel to begin a graceful shutdown.
    pub shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    workers: TaskTracker,
    workers_cancel: CancellationToken,
    grace: std::time::Duration,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("flusher: {0}")]
    Flusher(String),
    #[error("project {project}: no datafile (source unavailable and no cached copy): {message}")]
    NoDatafile { project: String, message: String },
}

impl Daemon {
    /// Loads datafiles, binds the listener and starts serving.
    pub async fn start(
        settings: &Settings,
        store: Option<Arc<dyn ProfileStore>>,
        queue: Arc<dyn EventQueue>,
        spool: Option<Arc<dyn EventQueue>>,
    ) -> Result<Self, StartError> {
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
            .map_err(|e| StartError::Flusher(e.to_string()))?;
            workers.spawn(flusher.run(workers_cancel.clone()));
        }
        let (sink, producer) = pipeline::producer(
            queue,
            spool,
            settings.events.channel_capacity,
            metrics.clone(),
            workers_cancel.clone(),
        );
        workers.spawn(producer);
        let service = Arc::new(Service::new(
            projects,
            gateway,
            sink,
            metrics,
            settings.enable_overrides,
        ));

        let listener = TcpListener::bind(settings.server.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: settings.server.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: settings.server.listen,
            source,
        })?;
        let app = Arc::new(App {
            service: service.clone(),
            config: HttpConfig {
                trust_forwarded_for: settings.server.trust_forwarded_for,
                max_body_bytes: settings.server.max_body_bytes,
                max_query_bytes: settings.server.max_query_bytes,
                max_attributes: settings.server.max_attributes,
                header_read_timeout: settings.server.header_read_timeout,
                admin_token: settings.admin_token.clone(),
            },
        });
        let shutdown = CancellationToken::new();
        let grace = settings.server.shutdown_grace;
        let server = tokio::spawn(crate::http::serve(listener, app, shutdown.clone(), grace));
        tracing::info!(%addr, projects = service.projects.len(), "bucketd listening");
        Ok(Self {
            addr,
            service,
            shutdown,
            server,
            workers,
            workers_cancel,
            grace,
        })
    }

    /// Asks every file-backed or polled project to re-read its datafile (SIGHUP).
    pub fn reload_datafiles(&self) {
        for p in &self.service.projects {
            p.request_refresh();
        }
    }

    /// Waits for shutdown to be requested, then stops in order within the grace period:
    /// the server stops accepting and finishes requests, then workers drain (queued events are
    /// published, pending profile saves written).
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = tokio::time::timeout_at(deadline, self.server).await;
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
