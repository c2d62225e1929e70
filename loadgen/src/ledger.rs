//! Bookkeeping for a run: every message acked in each room (shared by all
//! virtual users), and what each user received.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Every acked message, by room and id.
#[derive(Debug, Default)]
pub struct Ledger {
    acked: Mutex<HashMap<String, BTreeMap<u64, String>>>,
}

impl Ledger {
    /// Records that `cid` was acked as `id` in `room`.
    pub fn record_ack(&self, room: &str, id: u64, cid: &str) {
        let mut acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked.entry(room.to_owned()).or_default().insert(id, cid.to_owned());
    }

    /// The acked ids of a room.
    pub fn acked_in(&self, room: &str) -> BTreeMap<u64, String> {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner).get(room).cloned().unwrap_or_default()
    }

    /// How many messages were acked in all.
    pub fn total(&self) -> usize {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner).values().map(BTreeMap::len).sum()
    }
}

/// What one user received.
#[derive(Debug, Default)]
pub struct Received {
    /// Ids received.
    pub ids: HashSet<u64>,
    /// (user, cid) pairs received: the same pair under two ids is a
    /// duplicate too.
    keys: HashSet<(String, String)>,
    /// Messages received more than once.
    pub duplicates: u64,
    /// The longest time between two messages, while the run was sending.
    pub max_gap: Duration,
    last_at: Option<Instant>,
}

impl Received {
    /// Records one `message` frame; returns false for a duplicate.
    pub fn record(&mut self, id: u64, user: &str, cid: &str, sending: bool) -> bool {
        let now = Instant::now();
        if sending && let Some(last) = self.last_at {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last_at = Some(now);
        let new_id = self.ids.insert(id);
        let new_key = self.keys.insert((user.to_owned(), cid.to_owned()));
        if new_id && new_key {
            return true;
        }
        self.duplicates += 1;
        false
    }

    /// Forgets the time of the last message (the run stopped sending).
    pub fn pause_gaps(&mut self) {
        self.last_at = None;
    }

    /// The highest id received.
    pub fn last_id(&self) -> Option<u64> {
        self.ids.iter().max().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_counted_by_id_and_by_cid() {
        let mut received = Received::default();
        assert!(received.record(1, "a", "c1", true));
        assert!(!received.record(1, "a", "c1", true), "same id");
        assert!(!received.record(2, "a", "c1", true), "same (user, cid) under another id");
        assert!(received.record(3, "b", "c1", true), "another user's c1 is another message");
        assert_eq!(received.duplicates, 2);
        assert_eq!(received.last_id(), Some(3));
    }
}
