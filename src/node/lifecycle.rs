//! The managed-node (lifecycle) interface, as rclcpp_lifecycle offers it
//! (<https://design.ros2.org/articles/node_lifecycle.html>), for `lifecycle: true`: the services
//! `~/change_state`, `~/get_state`, `~/get_available_states`, `~/get_available_transitions`,
//! `~/get_transition_graph` and the topic `~/transition_event`, which `ros2 lifecycle` and
//! lifecycle managers (nav2's, launch_ros' LifecycleNode events) use. r2r has no lifecycle node;
//! this one drives the worker: configure loads the models, activate lets camera frames and
//! requests through, deactivate stops them (models stay in memory), cleanup frees the models,
//! shutdown finalizes.

use std::time::Duration;

use futures::{Stream, StreamExt};
use r2r::lifecycle_msgs::msg::{State, Transition, TransitionDescription, TransitionEvent};
use r2r::lifecycle_msgs::srv::{
    ChangeState, GetAvailableStates, GetAvailableTransitions, GetState,
};
use r2r::ServiceRequest;
use tokio::sync::Mutex;

use crate::worker::{Handle, Level, Request};

/// Model loading can take minutes (a download on first use).
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(1800);

/// Primary and transition state ids of lifecycle_msgs/msg/State.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    Unconfigured = 1,
    Inactive = 2,
    Active = 3,
    Finalized = 4,
}

const CONFIGURING: u8 = 10;
const CLEANING_UP: u8 = 11;
const SHUTTING_DOWN: u8 = 12;
const ACTIVATING: u8 = 13;
const DEACTIVATING: u8 = 14;

/// lifecycle_msgs/msg/Transition: the success transitions of the intermediate states.
const ON_SUCCESS: [(u8, u8); 5] = [
    (CONFIGURING, 10),
    (CLEANING_UP, 20),
    (SHUTTING_DOWN, 30),
    (ACTIVATING, 40),
    (DEACTIVATING, 50),
];
/// ... and their failure transitions (back to the start state).
const ON_FAILURE: [(u8, u8); 5] = [
    (CONFIGURING, 11),
    (CLEANING_UP, 21),
    (SHUTTING_DOWN, 31),
    (ACTIVATING, 41),
    (DEACTIVATING, 51),
];

fn state_label(id: u8) -> &'static str {
    match id {
        1 => "unconfigured",
        2 => "inactive",
        3 => "active",
        4 => "finalized",
        CONFIGURING => "configuring",
        CLEANING_UP => "cleaningup",
        SHUTTING_DOWN => "shuttingdown",
        ACTIVATING => "activating",
        DEACTIVATING => "deactivating",
        _ => "unknown",
    }
}

/// The public transitions: (id, label, from, through, to).
const TRANSITIONS: [(u8, &str, Primary, u8, Primary); 7] = [
    (
        1,
        "configure",
        Primary::Unconfigured,
        CONFIGURING,
        Primary::Inactive,
    ),
    (
        2,
        "cleanup",
        Primary::Inactive,
        CLEANING_UP,
        Primary::Unconfigured,
    ),
    (
        3,
        "activate",
        Primary::Inactive,
        ACTIVATING,
        Primary::Active,
    ),
    (
        4,
        "deactivate",
        Primary::Active,
        DEACTIVATING,
        Primary::Inactive,
    ),
    (
        5,
        "shutdown",
        Primary::Unconfigured,
        SHUTTING_DOWN,
        Primary::Finalized,
    ),
    (
        6,
        "shutdown",
        Primary::Inactive,
        SHUTTING_DOWN,
        Primary::Finalized,
    ),
    (
        7,
        "shutdown",
        Primary::Active,
        SHUTTING_DOWN,
        Primary::Finalized,
    ),
];

type TransitionRow = (u8, &'static str, Primary, u8, Primary);

/// The transition a ChangeState request names (by id, or by label when the id is 0, as
/// rclcpp_lifecycle accepts) from `current`.
fn find(current: Primary, id: u8, label: &str) -> Option<TransitionRow> {
    TRANSITIONS
        .iter()
        .copied()
        .find(|t| t.2 == current && (t.0 == id || (id == 0 && t.1 == label)))
}

fn state(id: u8) -> State {
    State {
        id,
        label: state_label(id).into(),
    }
}

fn transition(id: u8, label: &str) -> Transition {
    Transition {
        id,
        label: label.into(),
    }
}

fn description(t: &TransitionRow) -> TransitionDescription {
    TransitionDescription {
        transition: transition(t.0, t.1),
        start_state: state(t.2 as u8),
        goal_state: state(t.4 as u8),
    }
}

/// The lifecycle: the current primary state behind an async lock (transitions are serialized).
pub struct Lifecycle {
    current: Mutex<Primary>,
    handle: Handle,
    /// r2r publishers are Send, not Sync.
    events: std::sync::Mutex<r2r::Publisher<TransitionEvent>>,
    logger: String,
}

impl Lifecycle {
    pub fn new(handle: Handle, events: r2r::Publisher<TransitionEvent>, logger: String) -> Self {
        Self {
            current: Mutex::new(Primary::Unconfigured),
            handle,
            events: std::sync::Mutex::new(events),
            logger,
        }
    }

    fn event(&self, id: u8, label: &str, from: u8, to: u8) {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let msg = TransitionEvent {
            timestamp,
            transition: transition(id, label),
            start_state: state(from),
            goal_state: state(to),
        };
        let published = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .publish(&msg);
        if let Err(e) = published {
            crate::log(
                &self.logger,
                Level::Error,
                &format!("cannot publish a transition event: {e}"),
            );
        }
    }

    /// The work of an intermediate state; `Err` sends the node back to the start state.
    async fn run(&self, through: u8) -> Result<String, String> {
        match through {
            CONFIGURING => {
                crate::services::ask_worker(&self.handle, CONFIGURE_TIMEOUT, Request::Configure)
                    .await
            }
            ACTIVATING => {
                self.handle.set_active(true);
                Ok("processing frames and requests".into())
            }
            DEACTIVATING => {
                self.handle.set_active(false);
                Ok("stopped (models kept)".into())
            }
            CLEANING_UP | SHUTTING_DOWN => {
                self.handle.set_active(false);
                crate::services::ask_worker(&self.handle, CONFIGURE_TIMEOUT, Request::Cleanup).await
            }
            _ => Err("unknown transition state".into()),
        }
    }

    /// Performs a transition requested by id or label; publishes its events.
    pub async fn change(&self, id: u8, label: &str) -> bool {
        let mut current = self.current.lock().await;
        let Some(t) = find(*current, id, label) else {
            crate::log(
                &self.logger,
                Level::Warn,
                &format!(
                    "lifecycle: transition {id} `{label}` is not available in state `{}`",
                    state_label(*current as u8)
                ),
            );
            return false;
        };
        let (tid, tlabel, from, through, to) = t;
        self.event(tid, tlabel, from as u8, through);
        let result = self.run(through).await;
        let table = if result.is_ok() {
            ON_SUCCESS
        } else {
            ON_FAILURE
        };
        let done = table.iter().find(|(s, _)| *s == through).map_or(0, |t| t.1);
        let end = if result.is_ok() { to } else { from };
        self.event(done, "", through, end as u8);
        *current = end;
        let (level, msg) = match &result {
            Ok(m) => (
                Level::Info,
                format!("lifecycle: {tlabel} -> {}: {m}", state_label(end as u8)),
            ),
            Err(e) => (
                Level::Error,
                format!(
                    "lifecycle: {tlabel} failed, back to {}: {e}",
                    state_label(end as u8)
                ),
            ),
        };
        crate::log(&self.logger, level, &msg);
        result.is_ok()
    }

    pub async fn current(&self) -> Primary {
        *self.current.lock().await
    }
}

/// Serves the lifecycle services until the node stops.
pub async fn serve(
    lifecycle: std::sync::Arc<Lifecycle>,
    mut change: impl Stream<Item = ServiceRequest<ChangeState::Service>> + Unpin + Send + 'static,
    mut get: impl Stream<Item = ServiceRequest<GetState::Service>> + Unpin,
    mut states: impl Stream<Item = ServiceRequest<GetAvailableStates::Service>> + Unpin,
    mut transitions: impl Stream<Item = ServiceRequest<GetAvailableTransitions::Service>> + Unpin,
    mut graph: impl Stream<Item = ServiceRequest<GetAvailableTransitions::Service>> + Unpin,
) {
    let lc = lifecycle.clone();
    tokio::spawn(async move {
        while let Some(req) = change.next().await {
            let lc = lc.clone();
            tokio::spawn(async move {
                let t = &req.message.transition;
                let success = lc.change(t.id, &t.label).await;
                let _ = req.respond(ChangeState::Response { success });
            });
        }
    });
    loop {
        tokio::select! {
            Some(req) = get.next() => {
                let current_state = state(lifecycle.current().await as u8);
                let _ = req.respond(GetState::Response { current_state });
            }
            Some(req) = states.next() => {
                let available_states = [1, 2, 3, 4, CONFIGURING, CLEANING_UP, SHUTTING_DOWN, ACTIVATING, DEACTIVATING]
                    .into_iter()
                    .map(state)
                    .collect();
                let _ = req.respond(GetAvailableStates::Response { available_states });
            }
            Some(req) = transitions.next() => {
                let current = lifecycle.current().await;
                let available_transitions = TRANSITIONS
                    .iter()
                    .filter(|t| t.2 == current)
                    .map(description)
                    .collect();
                let _ = req.respond(GetAvailableTransitions::Response { available_transitions });
            }
            Some(req) = graph.next() => {
                let available_transitions = TRANSITIONS.iter().map(description).collect();
                let _ = req.respond(GetAvailableTransitions::Response { available_transitions });
            }
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_lifecycle_design() {
        assert_eq!(
            find(Primary::Unconfigured, 1, "").map(|t| t.4),
            Some(Primary::Inactive)
        );
        assert_eq!(
            find(Primary::Unconfigured, 0, "configure").map(|t| t.0),
            Some(1)
        );
        assert!(
            find(Primary::Unconfigured, 3, "").is_none(),
            "activate needs configure first"
        );
        assert_eq!(find(Primary::Active, 0, "shutdown").map(|t| t.0), Some(7));
        assert_eq!(
            find(Primary::Inactive, 2, "").map(|t| t.4),
            Some(Primary::Unconfigured)
        );
        assert!(find(Primary::Finalized, 0, "configure").is_none());
        for (s, _) in ON_SUCCESS.iter().chain(&ON_FAILURE) {
            assert_ne!(state_label(*s), "unknown");
        }
    }
}
