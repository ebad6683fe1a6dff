//! Which project a row belongs to, decided before the merge: the studio keys
//! traces and observations by id alone, so an event that reuses an id under
//! another project must not touch the first project's row. A stored row
//! keeps its project; a new row takes the project of its oldest event (by
//! version, so every replica decides alike); any other event is a dead
//! letter `project_mismatch`. Events of a project the studio does not know
//! are `unknown_project` unless projects are created on first sight.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt};

use crate::event::{Reason, Rejection, TraceEvent};
use crate::merge::Version;
use crate::store::rows::Stored;

/// Events of the batch with their index among the batch's items.
pub type Events<'a> = [(usize, &'a TraceEvent)];

/// Refusals by item index.
pub type Refused = BTreeMap<usize, Rejection>;

fn version(event: &TraceEvent) -> Version {
    Version::of(event.published_at, event.entry_id)
}

/// The project of each id among the batch's new rows: that of its oldest
/// event. Hashed: only looked up, and ids compared byte by byte in a tree
/// were a tenth of the writer's time in a drain.
fn oldest_projects<'a>(
    events: &Events<'a>,
    id_of: impl Fn(&'a TraceEvent) -> Option<&'a str>,
) -> HashMap<&'a str, (Version, &'a str)> {
    let mut oldest: HashMap<&str, (Version, &str)> = HashMap::with_capacity(events.len());
    for (_, event) in events {
        let Some(id) = id_of(event) else { continue };
        let candidate = (version(event), event.project_id.as_str());
        oldest
            .entry(id)
            .and_modify(|current| *current = (*current).min(candidate))
            .or_insert(candidate);
    }
    oldest
}

/// Events whose project differs from their trace's or their observation's.
pub fn refuse_mismatches(events: &Events<'_>, stored: &Stored) -> Refused {
    let trace_projects = oldest_projects(events, |e| Some(e.trace_id.as_str()));
    let observation_projects = oldest_projects(events, TraceEvent::observation_id);
    let mut refused = Refused::new();
    for (index, event) in events {
        let project = event.project_id.as_str();
        let trace_project = match stored.traces.get(&event.trace_id) {
            Some(trace) => trace.project_id.as_deref(),
            None => trace_projects.get(event.trace_id.as_str()).map(|(_, p)| *p),
        };
        let observation_project =
            event
                .observation_id()
                .and_then(|id| match stored.observations.get(id) {
                    Some(observation) => observation.project_id.as_deref(),
                    None => observation_projects.get(id).map(|(_, p)| *p),
                });
        let conflict = [
            ("trace", trace_project),
            ("observation", observation_project),
        ]
        .into_iter()
        .find_map(|(what, owner)| owner.filter(|owner| *owner != project).map(|o| (what, o)));
        if let Some((what, owner)) = conflict {
            refused.insert(
                *index,
                Rejection::new(
                    Reason::ProjectMismatch,
                    format!(
                        "project {project:?} differs from {owner:?}, the project of the {what} with this id (stored first)"
                    ),
                ),
            );
        }
    }
    refused
}

/// Every project the events name, sorted and distinct.
pub fn projects_of<'a>(events: &Events<'a>) -> Vec<&'a str> {
    let projects: BTreeSet<&str> = events
        .iter()
        .map(|(_, event)| event.project_id.as_str())
        .collect();
    projects.into_iter().collect()
}

/// Projects of the accepted events whose trace is not stored yet: the ones
/// that must exist in `projects` before the trace row is inserted.
pub fn projects_of_new_traces<'a>(
    events: &Events<'a>,
    refused: &Refused,
    stored: &Stored,
) -> Vec<&'a str> {
    let projects: BTreeSet<&str> = events
        .iter()
        .filter(|(index, event)| {
            !refused.contains_key(index) && !stored.traces.contains_key(&event.trace_id)
        })
        .map(|(_, event)| event.project_id.as_str())
        .collect();
    projects.into_iter().collect()
}

/// Refuses the accepted events of projects the studio does not know.
pub fn refuse_unknown(events: &Events<'_>, unknown: &[String], refused: &mut Refused) {
    if unknown.is_empty() {
        return;
    }
    for (index, event) in events {
        if refused.contains_key(index) || !unknown.contains(&event.project_id) {
            continue;
        }
        refused.insert(
            *index,
            Rejection::new(
                Reason::UnknownProject,
                format!(
                    "project {:?} is not in the studio's projects; create it, then `swisper-ingest dead-letters replay --reason unknown_project`",
                    event.project_id
                ),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, ObservationEnd, StreamId, TraceStart};
    use crate::store::rows::StoredTrace;
    use chrono::{TimeZone, Utc};

    fn event(seq: u64, trace: &str, project: &str, observation: Option<&str>) -> TraceEvent {
        TraceEvent {
            entry_id: StreamId { ms: 1, seq },
            trace_id: trace.into(),
            project_id: project.into(),
            published_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            body: match observation {
                None => EventBody::TraceStart(TraceStart::default()),
                Some(id) => EventBody::ObservationEnd {
                    observation_id: id.into(),
                    fields: ObservationEnd::default(),
                },
            },
        }
    }

    #[test]
    fn a_new_trace_takes_the_project_of_its_oldest_event_whatever_the_order() {
        let a = event(1, "t", "p1", None);
        let b = event(2, "t", "p2", Some("o"));
        for events in [vec![(0, &a), (1, &b)], vec![(0, &b), (1, &a)]] {
            let refused = refuse_mismatches(&events, &Stored::default());
            let refused_project: Vec<&str> = refused
                .keys()
                .map(|i| {
                    events
                        .iter()
                        .find(|(j, _)| j == i)
                        .unwrap()
                        .1
                        .project_id
                        .as_str()
                })
                .collect();
            assert_eq!(refused_project, ["p2"]);
            assert!(refused
                .values()
                .all(|r| r.reason == Reason::ProjectMismatch));
        }
    }

    #[test]
    fn a_stored_trace_keeps_its_project() {
        let mut stored = Stored::default();
        stored.traces.insert(
            "t".into(),
            StoredTrace {
                project_id: Some("p2".into()),
                first_seen_at: Utc::now(),
                start_version: None,
                has_state: true,
            },
        );
        let a = event(1, "t", "p1", None);
        let b = event(2, "t", "p2", None);
        let refused = refuse_mismatches(&[(0, &a), (1, &b)], &stored);
        assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn unknown_projects_are_refused_only_for_accepted_events() {
        let a = event(1, "t", "new", None);
        let b = event(2, "u", "known", None);
        let events = [(0, &a), (1, &b)];
        let mut refused = Refused::new();
        assert_eq!(
            projects_of_new_traces(&events, &refused, &Stored::default()),
            ["known", "new"]
        );
        refuse_unknown(&events, &["new".to_owned()], &mut refused);
        assert_eq!(refused[&0].reason, Reason::UnknownProject);
        assert!(!refused.contains_key(&1));
    }
}
