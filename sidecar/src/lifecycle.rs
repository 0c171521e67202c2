//! An incident's life, as seen from the sink: given the latest resource of a
//! fingerprint (found in the sink when the store does not know the signal's
//! firing instance), what a new firing becomes. The remediation controller's
//! `status.phase` decides whether a resource is still being worked on; see
//! `docs/reference.md`, "The controller's status contract".

use std::time::Duration;

use crate::sink::Found;
use crate::store::Snapshot;

/// How the controller's status is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Phases after which the controller is done with a resource
    /// (`SIGNALGATE_TERMINAL_PHASES`); any other phase means it is working on it.
    pub terminal_phases: Vec<String>,
    /// After a terminal phase, new firings are still absorbed this long from
    /// `status.completionTime` (`SIGNALGATE_REOPEN_COOLDOWN`).
    pub reopen_cooldown: Duration,
    /// The dedup window: for a signal without a firing instance, a resource
    /// last seen within it is its incident's.
    pub dedup_ttl: Duration,
    /// How long the store keeps an open incident with a firing instance
    /// after its last signal (`SIGNALGATE_INCIDENT_TTL`).
    pub incident_ttl: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            terminal_phases: ["Completed", "Failed", "Cancelled"]
                .map(String::from)
                .to_vec(),
            reopen_cooldown: Duration::from_secs(300),
            dedup_ttl: Duration::from_secs(300),
            incident_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a firing signal is, given its fingerprint's latest resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The resource is this signal's incident (the same firing instance, or
    /// for a signal without one, seen within the dedup window): a duplicate.
    Adopt,
    /// The resource is being remediated (or just was, within the cooldown):
    /// this new firing is absorbed into it.
    Absorb,
    /// A new incident: a new resource.
    New,
}

impl Policy {
    /// The verdict for a firing of instance `instance_ms` (0: unknown) at
    /// `now_ms`, whose fingerprint's latest resource is `found`.
    pub fn verdict(&self, found: Option<&Found>, instance_ms: i64, now_ms: i64) -> Verdict {
        let Some(found) = found else {
            return Verdict::New;
        };
        let same_incident = if instance_ms != 0 {
            found.instance_ms == instance_ms
        } else {
            found.last_seen_ms >= now_ms.saturating_sub(millis(self.dedup_ttl))
        };
        if same_incident {
            Verdict::Adopt
        } else if self.held(found, now_ms) {
            Verdict::Absorb
        } else {
            Verdict::New
        }
    }

    /// Whether a firing of instance `instance_ms` (0: unknown), received at
    /// `now_ms` in a namespace whose store data was lost and found in no
    /// resource of its own, was a member of the namespace's storm `storm`
    /// (ended): the storm's members still fire (it was last seen less than
    /// a member's lifetime in the store ago: the incident TTL, or the dedup
    /// window for a signal without an instance) and the firing began before
    /// that (a firing that began after it would have joined, or started, a
    /// storm the store knew).
    pub fn was_storm_member(&self, storm: &Snapshot, instance_ms: i64, now_ms: i64) -> bool {
        let lifetime = if instance_ms != 0 {
            self.incident_ttl
        } else {
            self.dedup_ttl
        };
        let live = now_ms < storm.last_seen_ms.saturating_add(millis(lifetime));
        live && instance_ms <= storm.last_seen_ms
    }

    /// Whether the controller is working on `found`: a phase that is not
    /// terminal, or a terminal one reached less than the cooldown ago.
    pub fn held(&self, found: &Found, now_ms: i64) -> bool {
        let Some(phase) = found.phase.as_deref().filter(|p| !p.is_empty()) else {
            return false;
        };
        if !self.terminal_phases.iter().any(|t| t == phase) {
            return true;
        }
        found
            .completed_ms
            .is_some_and(|done| now_ms < done.saturating_add(millis(self.reopen_cooldown)))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Location;

    const NOW: i64 = 1_000_000_000;

    fn found(instance_ms: i64, phase: Option<&str>, completed_ms: Option<i64>) -> Found {
        Found {
            location: Location {
                namespace: "shop".into(),
                name: "rr-1".into(),
            },
            first_seen_ms: NOW - 3_600_000,
            last_seen_ms: NOW - 3_600_000,
            occurrence_count: 4,
            instance_ms,
            firings: 1,
            resolution: None,
            phase: phase.map(String::from),
            completed_ms,
        }
    }

    #[test]
    fn nothing_found_is_a_new_incident() {
        assert_eq!(Policy::default().verdict(None, 7, NOW), Verdict::New);
    }

    #[test]
    fn the_same_firing_instance_is_adopted_however_old() {
        let p = Policy::default();
        assert_eq!(
            p.verdict(Some(&found(7, None, None)), 7, NOW),
            Verdict::Adopt
        );
        let done = found(7, Some("Completed"), Some(NOW - 86_400_000));
        assert_eq!(p.verdict(Some(&done), 7, NOW), Verdict::Adopt);
    }

    #[test]
    fn a_new_instance_is_new_unless_the_controller_holds_the_resource() {
        let p = Policy::default();
        assert_eq!(p.verdict(Some(&found(7, None, None)), 8, NOW), Verdict::New);
        let working = found(7, Some("Running"), None);
        assert_eq!(p.verdict(Some(&working), 8, NOW), Verdict::Absorb);
        let empty = found(7, Some(""), None);
        assert_eq!(p.verdict(Some(&empty), 8, NOW), Verdict::New);
    }

    #[test]
    fn a_terminal_phase_absorbs_only_within_the_cooldown() {
        let p = Policy {
            reopen_cooldown: Duration::from_secs(60),
            ..Policy::default()
        };
        let just_done = found(7, Some("Failed"), Some(NOW - 59_000));
        assert_eq!(p.verdict(Some(&just_done), 8, NOW), Verdict::Absorb);
        let long_done = found(7, Some("Failed"), Some(NOW - 60_000));
        assert_eq!(p.verdict(Some(&long_done), 8, NOW), Verdict::New);
        // No completion time: nothing to measure a cooldown from.
        let undated = found(7, Some("Completed"), None);
        assert_eq!(p.verdict(Some(&undated), 8, NOW), Verdict::New);
    }

    #[test]
    fn a_firing_counts_as_a_member_of_a_storm_whose_members_still_fire() {
        let p = Policy {
            dedup_ttl: Duration::from_secs(60),
            incident_ttl: Duration::from_secs(3600),
            ..Policy::default()
        };
        let storm = Snapshot {
            last_seen_ms: NOW - 120_000,
            ..Snapshot::default()
        };
        // Began before the storm was last seen, which was within the TTL.
        assert!(p.was_storm_member(&storm, NOW - 600_000, NOW));
        // Began after it: a new incident.
        assert!(!p.was_storm_member(&storm, NOW - 60_000, NOW));
        // No instance: the dedup window (1 min) has passed since.
        assert!(!p.was_storm_member(&storm, 0, NOW));
        let recent = Snapshot {
            last_seen_ms: NOW - 30_000,
            ..Snapshot::default()
        };
        assert!(p.was_storm_member(&recent, 0, NOW));
        // The storm's members have not fired for longer than they live.
        assert!(!p.was_storm_member(&storm, NOW - 600_000, NOW + 3_600_000));
    }

    #[test]
    fn without_an_instance_the_dedup_window_decides() {
        let p = Policy::default();
        let mut recent = found(0, None, None);
        recent.last_seen_ms = NOW - 299_000;
        assert_eq!(p.verdict(Some(&recent), 0, NOW), Verdict::Adopt);
        let old = found(0, None, None);
        assert_eq!(p.verdict(Some(&old), 0, NOW), Verdict::New);
        let held = found(0, Some("Running"), None);
        assert_eq!(p.verdict(Some(&held), 0, NOW), Verdict::Absorb);
    }
}
