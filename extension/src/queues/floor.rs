//! The scan floor of a queue: where lookups start, so that they skip the dead index entries
//! of handled events instead of wading through them.
//!
//! Event ids are allocated after the producer's transaction id (see `events::emit`), so an
//! event that is still invisible but has an id below the highest one handled belongs to a
//! transaction whose xid was assigned before the fetch. A mark records "everything below
//! `mark_id` is handled, except perhaps events of transactions with xid < `mark_xmax`"
//! (`mark_xmax` = the next xid to be assigned, read after the fetch). Once a snapshot's
//! xmin reaches `mark_xmax`, none of those transactions is running: their events are
//! visible, and as soon as a lookup has passed `mark_id` (or found nothing more) every event
//! below it has been handled, so the floor moves up to the mark.

/// A queue's floor as read at the start of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Floor {
    /// Every event with a smaller id is handled or will never exist.
    pub scan_from: i64,
    /// The pending mark, if any.
    pub mark_id: Option<i64>,
    /// Whether every transaction that was running when the mark was set has ended.
    pub mark_ripe: bool,
}

/// What one lookup saw.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    /// How many events the lookup fetched, and how many it could have fetched.
    pub fetched: usize,
    pub limit: usize,
    /// The id of the last event it handled (None if it handled none, or held).
    pub last_id: Option<i64>,
    /// Whether the queue is now held at a failing event.
    pub held: bool,
}

/// Where the next lookups start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextFloor {
    pub scan_from: i64,
    pub mark_id: Option<i64>,
    /// The mark is new: its `mark_xmax` must be set to the next xid to be assigned.
    pub new_mark: bool,
}

/// The floor after a lookup that saw `seen`.
pub fn next(floor: Floor, seen: Seen) -> NextFloor {
    let mut scan_from = floor.scan_from;
    let mut mark_id = floor.mark_id;
    let unchanged = |scan_from, mark_id| NextFloor {
        scan_from,
        mark_id,
        new_mark: false,
    };
    if seen.held {
        return unchanged(scan_from, mark_id);
    }
    let exhausted = seen.fetched < seen.limit;
    if let Some(m) = mark_id {
        if floor.mark_ripe && (exhausted || seen.last_id.is_some_and(|l| l >= m)) {
            scan_from = scan_from.max(m);
            mark_id = None;
        }
    }
    if mark_id.is_none() {
        if let Some(l) = seen.last_id {
            if l + 1 > scan_from {
                return NextFloor {
                    scan_from,
                    mark_id: Some(l + 1),
                    new_mark: true,
                };
            }
        }
    }
    unchanged(scan_from, mark_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(fetched: usize, last_id: Option<i64>) -> Seen {
        Seen {
            fetched,
            limit: 10,
            last_id,
            held: false,
        }
    }

    const START: Floor = Floor {
        scan_from: 0,
        mark_id: None,
        mark_ripe: false,
    };

    #[test]
    fn a_lookup_sets_a_mark_past_its_last_event_but_does_not_move_the_floor() {
        let n = next(START, seen(10, Some(41)));
        assert_eq!(
            n,
            NextFloor {
                scan_from: 0,
                mark_id: Some(42),
                new_mark: true
            }
        );
    }

    #[test]
    fn the_floor_waits_while_transactions_older_than_the_mark_may_still_commit() {
        // An earlier transaction may still commit an event below 42: not ripe, stay.
        let floor = Floor {
            scan_from: 0,
            mark_id: Some(42),
            mark_ripe: false,
        };
        let n = next(floor, seen(3, None));
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (0, Some(42), false));
        let n = next(floor, seen(10, Some(60)));
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (0, Some(42), false));
    }

    #[test]
    fn a_ripe_mark_becomes_the_floor_once_a_lookup_passes_it_or_finds_the_queue_empty() {
        let ripe = Floor {
            scan_from: 0,
            mark_id: Some(42),
            mark_ripe: true,
        };
        // passed the mark: floor moves, and a new mark follows the last event
        let n = next(ripe, seen(10, Some(50)));
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (42, Some(51), true));
        // nothing more to fetch: every event below the mark is handled
        let n = next(ripe, seen(0, None));
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (42, None, false));
        // a full lookup still below the mark: events below it may remain, stay
        let n = next(ripe, seen(10, Some(30)));
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (0, Some(42), false));
    }

    #[test]
    fn a_held_queue_keeps_its_floor_and_mark() {
        let floor = Floor {
            scan_from: 7,
            mark_id: Some(42),
            mark_ripe: true,
        };
        let held = Seen {
            fetched: 0,
            limit: 10,
            last_id: None,
            held: true,
        };
        let n = next(floor, held);
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (7, Some(42), false));
    }

    #[test]
    fn the_floor_never_moves_backwards() {
        let floor = Floor {
            scan_from: 100,
            mark_id: Some(42),
            mark_ripe: true,
        };
        let n = next(floor, seen(2, Some(101)));
        assert_eq!(n.scan_from, 100);
        assert_eq!((n.mark_id, n.new_mark), (Some(102), true));
        // a last id below the floor sets no mark
        let n = next(START_AT_100, seen(1, Some(50)));
        assert_eq!((n.scan_from, n.mark_id, n.new_mark), (100, None, false));
    }

    const START_AT_100: Floor = Floor {
        scan_from: 100,
        mark_id: None,
        mark_ripe: false,
    };
}
