//! Presence changes batched into diffs: pure, no locks, no sockets.
//!
//! A room's announced changes are kept until the next flush; then each
//! socket is sent one `presence_diff` with the net effect of the changes it
//! has not been told yet (those numbered after its `after`). Sending one
//! frame per change per socket made a crowd of `n` arrivals cost `n²`
//! frames; a batch costs each socket one frame, whatever the crowd.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::ServerFrame;

/// One announced change, as a room keeps it until it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its number: one counter for every room, in the order Redis made them.
    pub seq: u64,
    /// Whether the user arrived (else left).
    pub join: bool,
    /// The user; shared, since a change may wait in many sockets' holds.
    pub user: Arc<str>,
}

/// The net effect of some changes: who arrived and who left, each sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Users present now and not before.
    pub joins: Vec<Arc<str>>,
    /// Users present before and not now.
    pub leaves: Vec<Arc<str>>,
}

/// After a lost subscription: the number of the snapshot taken since, and
/// what changed between the room's last view and that snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Reset<'a> {
    /// The snapshot's change number.
    pub seq: u64,
    /// The changes that were not heard, numbered `seq`.
    pub missed: &'a [Entry],
}

// === impl Diff ===

impl Diff {
    /// The net effect of `changes`, in the order they were made.
    ///
    /// A user's changes alternate (a join, then a leave, then a join...), so
    /// its state before them is the opposite of its first change, and after
    /// them its last change: when the two agree (it came and went, or went
    /// and came back) there is nothing to tell. A change repeated after a
    /// lost subscription counts as the state it announces, so a repeat alone
    /// is told again, which clients take as a no-op.
    pub fn of<'a>(changes: impl IntoIterator<Item = &'a Entry>) -> Self {
        // Per user: (joined before? inferred from the first change, joined now?).
        let mut users: BTreeMap<&Arc<str>, (bool, bool)> = BTreeMap::new();
        for change in changes {
            users.entry(&change.user).and_modify(|(_, now)| *now = change.join).or_insert((!change.join, change.join));
        }
        let mut diff = Self::default();
        for (user, (before, now)) in users {
            match (before, now) {
                (false, true) => diff.joins.push(user.clone()),
                (true, false) => diff.leaves.push(user.clone()),
                _ => {}
            }
        }
        diff
    }

    /// The changes after `*after` among `changes`, netted; moves `*after` to
    /// the highest number seen, so that no change is told twice.
    pub fn since<'a>(after: &mut u64, changes: impl IntoIterator<Item = &'a Entry>) -> Self {
        let start = *after;
        let news = changes.into_iter().filter(|change| change.seq > start).inspect(|change| {
            *after = (*after).max(change.seq);
        });
        Self::of(news)
    }

    /// What one socket, told every change up to `*after`, is told at a
    /// flush: the news among the changes it `held` while its answer was
    /// being made and the room's `pending` ones, and after a lost
    /// subscription all of `reset`'s (then `*after` becomes its number,
    /// even a lower one: Redis lost its data and counts afresh).
    pub fn news(after: &mut u64, held: &[Entry], pending: &[Entry], reset: Option<Reset<'_>>) -> Self {
        let changes = held.iter().chain(pending);
        match reset {
            None => Self::since(after, changes),
            Some(Reset { seq, missed }) => {
                let start = std::mem::replace(after, seq);
                Self::of(changes.filter(|change| change.seq > start).chain(missed))
            }
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` frame of `room`; `None` when nothing changed.
    pub fn frame(&self, room: &str) -> Option<Bytes> {
        if self.is_empty() {
            return None;
        }
        let joins: Vec<&str> = self.joins.iter().map(AsRef::as_ref).collect();
        let leaves: Vec<&str> = self.leaves.iter().map(AsRef::as_ref).collect();
        Some(ServerFrame::PresenceDiff { room, joins: &joins, leaves: &leaves }.encode())
    }
}

/// Appends `news` to a hold, keeping at most `max` changes (a socket whose
/// answer takes that long misses the rest, as it would a full queue).
pub fn hold(held: &mut Vec<Entry>, news: &[Entry], max: usize) {
    let room = max.saturating_sub(held.len());
    held.extend(news.iter().take(room).cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, join: bool, user: &str) -> Entry {
        Entry { seq, join, user: user.into() }
    }

    fn names(users: &[Arc<str>]) -> Vec<&str> {
        users.iter().map(AsRef::as_ref).collect()
    }

    #[test]
    fn a_diff_is_the_net_effect_sorted() {
        let changes = [
            entry(1, true, "cy"),
            entry(2, true, "bob"),
            entry(3, false, "ann"),
            entry(4, true, "dan"),
            entry(5, false, "dan"),
            entry(6, false, "eve"),
            entry(7, true, "eve"),
            entry(8, true, "ada"),
        ];
        let diff = Diff::of(&changes);
        assert_eq!(names(&diff.joins), ["ada", "bob", "cy"], "dan came and went, eve went and came back");
        assert_eq!(names(&diff.leaves), ["ann"]);
    }

    #[test]
    fn a_net_no_op_makes_no_frame() {
        let diff =
            Diff::of(&[entry(1, true, "dan"), entry(2, false, "dan"), entry(3, true, "dan"), entry(4, false, "dan")]);
        assert!(diff.is_empty());
        assert_eq!(diff.frame("lobby"), None);
        assert_eq!(Diff::default().frame("lobby"), None);
    }

    #[test]
    fn the_frame_has_the_documented_shape() {
        let diff = Diff::of(&[entry(1, true, "bob"), entry(2, false, "carol")]);
        let frame = diff.frame("lobby").expect("a change");
        let json: serde_json::Value = serde_json::from_slice(&frame).expect("json");
        assert_eq!(json, serde_json::json!({"type":"presence_diff","room":"lobby","joins":["bob"],"leaves":["carol"]}));
    }

    #[test]
    fn only_changes_after_the_cursor_count_and_the_cursor_moves() {
        let changes = [entry(4, true, "ann"), entry(5, true, "bob"), entry(6, false, "ann")];
        let mut after = 4;
        let diff = Diff::since(&mut after, &changes);
        assert_eq!(names(&diff.joins), ["bob"]);
        assert_eq!(names(&diff.leaves), ["ann"], "ann's join is in what the socket was told");
        assert_eq!(after, 6);
        assert!(Diff::since(&mut after, &changes).is_empty(), "nothing is told twice");
        assert_eq!(after, 6);
        let mut ahead = 9;
        assert!(Diff::since(&mut ahead, &changes).is_empty(), "a snapshot newer than every change");
        assert_eq!(ahead, 9, "never moves back");
    }

    #[test]
    fn held_changes_come_first_and_a_reset_is_told_whatever_the_cursor() {
        let held = [entry(3, true, "ann"), entry(5, true, "bob")];
        let pending = [entry(6, false, "ann"), entry(7, true, "cy")];
        let mut after = 4;
        let diff = Diff::news(&mut after, &held, &pending, None);
        assert_eq!((names(&diff.joins), names(&diff.leaves)), (vec!["bob", "cy"], vec!["ann"]));
        assert_eq!(after, 7);

        // The subscription broke: dan left unheard; Redis counts from 2 now.
        let missed = [entry(2, false, "dan")];
        let mut after = 5;
        let diff = Diff::news(&mut after, &[], &pending, Some(Reset { seq: 2, missed: &missed }));
        assert_eq!((names(&diff.joins), names(&diff.leaves)), (vec!["cy"], vec!["ann", "dan"]));
        assert_eq!(after, 2, "the snapshot's number, even a lower one");
    }

    #[test]
    fn a_hold_is_bounded() {
        let mut held = vec![entry(1, true, "a")];
        hold(&mut held, &[entry(2, true, "b"), entry(3, true, "c")], 2);
        assert_eq!(held, [entry(1, true, "a"), entry(2, true, "b")]);
        hold(&mut held, &[entry(4, true, "d")], 2);
        assert_eq!(held.len(), 2);
    }
}
