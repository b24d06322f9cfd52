//! Warnings about objects become Kubernetes Events on those objects (`kubectl describe svc`
//! shows them), once per warning: a warning that stays is not re-published on every sync,
//! and one that goes away and comes back is published again.
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Client,
};

use super::translate::Warning;

/// The reporting controller named in the Events.
pub const CONTROLLER: &str = "xvs";
/// The Event reason, as `kubectl get events` shows it.
pub const REASON: &str = "SkippedByXvs";

pub struct EventPublisher {
    recorder: Recorder,
    published: BTreeSet<Warning>,
}

impl EventPublisher {
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter { controller: CONTROLLER.into(), instance: Some(format!("{CONTROLLER}-{node_name}")) };
        Self { recorder: Recorder::new(client, reporter), published: BTreeSet::new() }
    }

    /// The warnings not published yet; forgets the ones that went away.
    pub fn fresh(&mut self, warnings: &[Warning]) -> Vec<Warning> {
        let now: BTreeSet<Warning> = warnings.iter().cloned().collect();
        let fresh = now.difference(&self.published).cloned().collect();
        self.published = now;
        fresh
    }

    /// Publishes `warnings` in a background task, so a slow or failing API never delays a sync.
    pub fn publish(&self, warnings: Vec<Warning>) {
        if warnings.is_empty() {
            return;
        }
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            for w in warnings {
                let event = Event { type_: EventType::Warning, reason: REASON.into(), note: Some(truncate(&w.cause)), action: "Translate".into(), secondary: None };
                if let Err(e) = recorder.publish(&event, &reference(&w)).await {
                    tracing::warn!(object = %w.object, "publishing the Event failed: {}", crate::error_chain(&e));
                }
            }
        });
    }
}

fn reference(w: &Warning) -> ObjectReference {
    ObjectReference {
        api_version: Some(w.object.api_version().into()),
        kind: Some(w.object.kind.into()),
        namespace: Some(w.object.namespace.clone()).filter(|n| !n.is_empty()),
        name: Some(w.object.name.clone()),
        uid: w.object.uid.clone(),
        ..Default::default()
    }
}

/// The API refuses Event notes over 1 kB.
fn truncate(note: &str) -> String {
    const MAX: usize = 1024;
    if note.len() <= MAX {
        return note.to_owned();
    }
    let mut end = MAX - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}
