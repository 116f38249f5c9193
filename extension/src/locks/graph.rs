//! Deadlock detection: before a request waits, the waits-for graph across every resource
//! is checked for a cycle through the new request, and the request that would close one is
//! refused with an error that names it.
//!
//! The graph's nodes are holder names. A holder that waits on a resource waits for every
//! live holder of it, and (strict FIFO) for every request queued ahead of its own there.
//! Checks run one at a time (the `LockGraph` advisory lock), after the request is queued:
//! of two requests closing one cycle at once, the second check sees the first.
use pgrx::PgSqlErrorCode as Code;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{now, state};
use crate::core::errors::{self, raise};

/// One edge: `from` waits for `to` on `resource` (`to` holds it, or waits ahead there).
#[derive(Clone, Debug)]
struct Edge {
    to: String,
    resource: String,
    held: bool,
}

/// Raise if `holder`, now queued on `resources`, waits (through others) for itself.
pub fn refuse_cycle(holder: &str, resources: &[String]) {
    let all = state::read_all();
    let now = now();
    let mut holders_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for h in all.holders.iter().filter(|h| h.live(now)) {
        holders_of
            .entry(h.resource.as_str())
            .or_default()
            .insert(h.holder.as_str());
    }
    let mut edges: BTreeMap<&str, Vec<Edge>> = BTreeMap::new();
    for w in &all.requests {
        let out = edges.entry(w.holder.as_str()).or_default();
        for h in holders_of.get(w.resource.as_str()).into_iter().flatten() {
            out.push(Edge {
                to: h.to_string(),
                resource: w.resource.clone(),
                held: true,
            });
        }
        for ahead in all
            .requests
            .iter()
            .filter(|a| a.resource == w.resource && a.ticket < w.ticket)
        {
            out.push(Edge {
                to: ahead.holder.clone(),
                resource: w.resource.clone(),
                held: false,
            });
        }
    }
    // Breadth first from the new request's edges, back to `holder`.
    let mut parent: BTreeMap<String, (String, Edge)> = BTreeMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for e in edges.get(holder).into_iter().flatten() {
        if !resources.contains(&e.resource) {
            continue;
        }
        if e.to == holder {
            refuse(holder, &[(holder.to_string(), e.clone())]);
        }
        if seen.insert(e.to.clone()) {
            parent.insert(e.to.clone(), (holder.to_string(), e.clone()));
            queue.push_back(e.to.clone());
        }
    }
    while let Some(node) = queue.pop_front() {
        for e in edges.get(node.as_str()).into_iter().flatten() {
            if e.to == holder {
                // The cycle: holder -> ... -> node -> holder.
                let mut path = vec![(node.clone(), e.clone())];
                let mut at = node.clone();
                while let Some((from, edge)) = parent.get(&at) {
                    path.push((from.clone(), edge.clone()));
                    if from == holder {
                        break;
                    }
                    at = from.clone();
                }
                path.reverse();
                refuse(holder, &path);
            }
            if seen.insert(e.to.clone()) {
                parent.insert(e.to.clone(), (node.clone(), e.clone()));
                queue.push_back(e.to.clone());
            }
        }
    }
}

/// The error: `path` is the cycle's edges in order, each (waiter, edge).
fn refuse(holder: &str, path: &[(String, Edge)]) -> ! {
    let steps: Vec<String> = path
        .iter()
        .map(|(from, e)| {
            if e.held {
                format!(
                    "{} waits for {} held by {}",
                    errors::shown(from),
                    errors::shown(&e.resource),
                    errors::shown(&e.to)
                )
            } else {
                format!(
                    "{} waits for {} behind {}",
                    errors::shown(from),
                    errors::shown(&e.resource),
                    errors::shown(&e.to)
                )
            }
        })
        .collect();
    raise(
        Code::ERRCODE_T_R_DEADLOCK_DETECTED,
        format!(
            "deadlock: this request of {} would close a cycle: {}",
            errors::shown(holder),
            steps.join("; ")
        ),
        Some("Acquire resources in one order everywhere, or all at once with herald.lock_acquire_all().".into()),
    )
}
