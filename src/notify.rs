//! Decision and conversion notifications, for `GET /v1/notifications/event-stream`: a
//! [`tokio::sync::broadcast`] channel owned by the service. A notification is built and sent
//! only while someone is subscribed, so decisions pay one atomic load when nobody listens.
//! Subscribers are bounded (a slot each) and a slow one misses the oldest notifications instead
//! of holding memory.

use serde_json::Value;
use std::sync::Arc;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

/// What a notification is about (the Agent's `filter` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A decision (`decide`, an experiment activation).
    Decision,
    /// A conversion (`track`).
    Track,
    /// A new datafile revision (emitted by the event stream itself, see
    /// `crate::http::agent::notifications`).
    ProjectConfigUpdate,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Decision, Kind::Track, Kind::ProjectConfigUpdate];

    /// The name clients filter by.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Track => "track",
            Kind::ProjectConfigUpdate => "project_config_update",
        }
    }

    /// The kind of a filter name, `None` for a name the Agent does not know.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One notification: the project it belongs to, its kind and its JSON message.
#[derive(Debug)]
pub struct Notification {
    /// Index of the project in the service's project list.
    pub project: usize,
    pub kind: Kind,
    pub message: Value,
}

/// Why a client cannot subscribe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error("Notification stream not enabled")]
    Disabled,
    #[error("too many notification subscribers (at most {0})")]
    Full(usize),
}

/// The publishing side, owned by the service.
pub struct Notifier {
    tx: Option<broadcast::Sender<Arc<Notification>>>,
    slots: Arc<Semaphore>,
    max_subscribers: usize,
}

impl Notifier {
    /// Notifications off: nothing is ever built, subscribing fails.
    pub fn disabled() -> Self {
        Self {
            tx: None,
            slots: Arc::new(Semaphore::new(0)),
            max_subscribers: 0,
        }
    }

    /// Notifications on, for at most `max_subscribers` clients that may each fall `buffer`
    /// notifications behind.
    pub fn new(buffer: usize, max_subscribers: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Self {
            tx: Some(tx),
            slots: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
        }
    }

    /// Whether anyone listens now (the hot path's only cost).
    pub fn wanted(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Sends the message `build` makes, if anyone listens.
    pub fn publish(&self, project: usize, kind: Kind, build: impl FnOnce() -> Value) {
        let Some(tx) = &self.tx else { return };
        if tx.receiver_count() == 0 {
            return;
        }
        // An error means the last subscriber left meanwhile: nobody to tell.
        let _ = tx.send(Arc::new(Notification {
            project,
            kind,
            message: build(),
        }));
    }

    /// A new subscriber, within the bound.
    pub fn subscribe(&self) -> Result<Subscription, NotifyError> {
        let tx = self.tx.as_ref().ok_or(NotifyError::Disabled)?;
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| NotifyError::Full(self.max_subscribers))?;
        Ok(Subscription {
            rx: tx.subscribe(),
            _slot: slot,
            missed: 0,
        })
    }
}

/// One subscriber's receiving side; dropping it frees its slot.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Notification>>,
    _slot: OwnedSemaphorePermit,
    missed: u64,
}

impl Subscription {
    /// The next notification; `None` once the service is gone.
    pub async fn next(&mut self) -> Option<Arc<Notification>> {
        loop {
            match self.rx.recv().await {
                Ok(n) => return Some(n),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.missed += n;
                    tracing::debug!(missed = n, "notification subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// How many notifications this subscriber missed by falling behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn nothing_is_built_without_a_subscriber() {
        let n = Notifier::new(4, 2);
        let mut built = false;
        n.publish(0, Kind::Decision, || {
            built = true;
            json!({})
        });
        assert!(!built, "a message was built with nobody listening");
        let mut sub = n.subscribe().unwrap();
        assert!(n.wanted());
        n.publish(1, Kind::Track, || json!({"EventKey": "e"}));
        let got = sub.next().await.unwrap();
        assert_eq!((got.project, got.kind), (1, Kind::Track));
        assert_eq!(got.message["EventKey"], "e");
    }

    #[test]
    fn subscribers_are_bounded_and_slots_come_back() {
        let n = Notifier::new(4, 1);
        let first = n.subscribe().unwrap();
        assert_eq!(n.subscribe().err(), Some(NotifyError::Full(1)));
        drop(first);
        assert!(n.subscribe().is_ok(), "a dropped subscriber keeps its slot");
        assert_eq!(
            Notifier::disabled().subscribe().err(),
            Some(NotifyError::Disabled)
        );
    }

    #[tokio::test]
    async fn a_slow_subscriber_misses_the_oldest() {
        let n = Notifier::new(2, 1);
        let mut sub = n.subscribe().unwrap();
        for i in 0..5 {
            n.publish(0, Kind::Decision, || json!(i));
        }
        assert_eq!(sub.next().await.unwrap().message, json!(3));
        assert_eq!(sub.missed(), 3);
    }

    #[test]
    fn filter_names_are_the_agents() {
        assert_eq!(Kind::parse("decision"), Some(Kind::Decision));
        assert_eq!(Kind::parse("track"), Some(Kind::Track));
        assert_eq!(
            Kind::parse("project_config_update"),
            Some(Kind::ProjectConfigUpdate)
        );
        assert_eq!(Kind::parse("project-config-update"), None);
        assert_eq!(Kind::parse("Decision"), None);
    }
}
