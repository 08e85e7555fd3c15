//! The service's notification points: the messages of decision and conversion notifications (in
//! the shapes the Agent's Go SDK streams: `Type`, `UserContext`, `DecisionInfo` / `EventKey`,
//! `EventTags`), and subscribing to one project's stream. Messages are built only while the
//! stream has subscribers (see [`crate::notify`]).

use super::{ExperimentAnswer, PinnedProject, Service};
use crate::core::{Attributes, FlagDecision, UserContext};
use crate::notify::{Kind, Notification, NotifyError, Subscription};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// A user as the Go SDK's notifications show one.
fn user_json(user_id: &str, attributes: &Attributes) -> Value {
    json!({ "ID": user_id, "Attributes": attributes })
}

/// One project's notifications of the kinds a client asked for.
pub struct ProjectNotifications {
    subscription: Subscription,
    project: usize,
    kinds: HashSet<Kind>,
}

impl ProjectNotifications {
    /// The next notification the client wants; `None` once the service is gone.
    pub async fn next(&mut self) -> Option<Arc<Notification>> {
        loop {
            let n = self.subscription.next().await?;
            if n.project == self.project && self.kinds.contains(&n.kind) {
                return Some(n);
            }
        }
    }
}

impl Service {
    /// Subscribes to the pinned project's notifications of `kinds`.
    pub fn subscribe_notifications(
        &self,
        snap: &PinnedProject,
        kinds: HashSet<Kind>,
    ) -> Result<ProjectNotifications, NotifyError> {
        Ok(ProjectNotifications {
            subscription: self.notify.subscribe()?,
            project: snap.index,
            kinds,
        })
    }

    /// Flag decisions (the Go SDK's `flag` decision notifications), one per flag.
    pub(super) fn notify_flags(
        &self,
        snap: &PinnedProject,
        user: &UserContext,
        decisions: &[FlagDecision],
        dispatched: bool,
    ) {
        if !self.notify.wanted() {
            return;
        }
        for d in decisions {
            self.notify.publish(snap.index, Kind::Decision, || {
                json!({
                    "Type": "flag",
                    "UserContext": user_json(&user.user_id, &user.attributes),
                    "DecisionInfo": {
                        "flagKey": d.flag_key,
                        "enabled": d.enabled,
                        "variables": d.variables,
                        "variationKey": d.variation_key.as_deref().unwrap_or(""),
                        "ruleKey": d.rule_key.as_deref().unwrap_or(""),
                        "reasons": d.reasons,
                        "decisionEventDispatched": dispatched,
                    },
                })
            });
        }
    }

    /// An experiment decision (the Go SDK's `ab-test` decision notification).
    pub(super) fn notify_experiment(
        &self,
        snap: &PinnedProject,
        user: &UserContext,
        answer: &ExperimentAnswer,
    ) {
        self.notify.publish(snap.index, Kind::Decision, || {
            json!({
                "Type": "ab-test",
                "UserContext": user_json(&user.user_id, &user.attributes),
                "DecisionInfo": {
                    "experimentKey": answer.experiment_key,
                    "variationKey": answer.variation_key.as_deref().unwrap_or(""),
                },
            })
        });
    }

    /// A feature activation (the Go SDK's `all-feature-variables` decision notification, what
    /// the Agent's `/v1/activate` of a feature sends): the source is `feature-test` (with the
    /// experiment and variation) when one of the flag's experiments served it, else `rollout`.
    pub(super) fn notify_feature(
        &self,
        snap: &PinnedProject,
        user: &UserContext,
        d: &FlagDecision,
    ) {
        self.notify.publish(snap.index, Kind::Decision, || {
            let config = snap.config();
            let test = config.flag_by_key(&d.flag_key).and_then(|f| {
                let rule = d.rule_key.as_deref()?;
                config.flags[f]
                    .experiments
                    .iter()
                    .any(|&e| config.experiments[e].key == rule)
                    .then_some(rule)
            });
            let (source, source_info) = match (test, d.variation_key.as_deref()) {
                (Some(rule), Some(variation)) => (
                    "feature-test",
                    json!({"experimentKey": rule, "variationKey": variation}),
                ),
                _ => ("rollout", json!({})),
            };
            json!({
                "Type": "all-feature-variables",
                "UserContext": user_json(&user.user_id, &user.attributes),
                "DecisionInfo": {
                    "feature": {
                        "featureKey": d.flag_key,
                        "featureEnabled": d.enabled,
                        "source": source,
                        "sourceInfo": source_info,
                        "variableValues": d.variables,
                    },
                },
            })
        });
    }

    /// A conversion (the Go SDK's track notification).
    pub(super) fn notify_track(
        &self,
        snap: &PinnedProject,
        event_key: &str,
        user_id: &str,
        attributes: &Attributes,
        tags: Option<&Map<String, Value>>,
    ) {
        self.notify.publish(snap.index, Kind::Track, || {
            json!({
                "EventKey": event_key,
                "UserContext": user_json(user_id, attributes),
                "EventTags": tags.cloned().unwrap_or_default(),
            })
        });
    }
}
