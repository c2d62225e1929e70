//! One room's index inside its partition: its newest id, its recent messages
//! and the sends it must not store twice.
//!
//! A bridge reads every partition from its first retained entry, so a room's
//! index knows the room's whole retained chain: each message's `prev_id` is
//! exact, joins get their tail and short resumes their range from memory,
//! and only resumes older than [`RECENT`] messages scan the partition. The
//! index is deterministic (it depends on the partition's content alone), so
//! every bridge computes the same `prev_id`s and the same repeats.

use std::collections::VecDeque;
use std::time::Duration;

use proto::rules::RecentSends;
pub use proto::rules::SendKey;
use proto::warren::v1::Message;

/// Messages kept per room: at least a join's tail (50) plus a margin.
pub const RECENT: usize = 64;
/// How far back (by message time) a repeated (user, cid) is recognised.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Sends remembered per room, whatever their age.
const MAX_SENDS: usize = 1024;
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
const DEDUP_WINDOW_MS: i64 = DEDUP_WINDOW.as_millis() as i64;

/// What appending a message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// A new message, with its `prev_id` set.
    New(Message),
    /// A repeat of the message with this id (same user and cid): it is not
    /// part of the room.
    Repeat(u64),
}

/// One room's index.
#[derive(Debug, Default)]
pub struct RoomLog {
    /// The newest id of the room (0: none).
    last_id: u64,
    /// The newest messages, a chain: each one's `prev_id` is the id of the
    /// one before it.
    recent: VecDeque<Message>,
    /// The first id of each remembered (user, cid).
    sends: RecentSends<MAX_SENDS, DEDUP_WINDOW_MS>,
}

/// An answer from the index: messages in id order, and the id up to which
/// they are the whole truth.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Range {
    /// The messages.
    pub messages: Vec<Message>,
    /// Every message with an id up to this is in `messages` (from the
    /// request's lower bound on).
    pub covered_to: u64,
}

impl RoomLog {
    /// The room's newest id (0: none).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// The time of the room's newest message (ms since the Unix epoch; 0
    /// when none is kept).
    pub fn last_ts(&self) -> i64 {
        self.recent.back().map_or(0, |newest| newest.ts)
    }

    /// The id of the first message under `key`, if it is remembered.
    pub fn first_send(&self, key: &SendKey) -> Option<u64> {
        self.sends.first(key)
    }

    /// Takes the next message of the room, read from its partition.
    pub fn append(&mut self, mut message: Message) -> Appended {
        let key = (message.user.clone(), message.cid.clone());
        if let Some(first) = self.sends.remember(key, message.id, message.ts) {
            return Appended::Repeat(first);
        }
        message.prev_id = self.last_id;
        self.last_id = message.id;
        self.recent.push_back(message.clone());
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Appended::New(message)
    }

    /// Ids above this are all in memory.
    pub fn covered_from(&self) -> u64 {
        self.recent.front().map_or(self.last_id, |first| first.prev_id)
    }

    /// The messages with ids in `(after, up_to]`, at most `page` of them;
    /// `None` when older messages of the range are no longer in memory.
    pub fn range(&self, after: u64, up_to: u64, page: usize) -> Option<Range> {
        if after < self.covered_from() {
            return None;
        }
        let messages: Vec<Message> =
            self.recent.iter().filter(|m| m.id > after && m.id <= up_to).take(page).cloned().collect();
        let covered_to = if messages.len() == page { messages.last().map_or(up_to, |m| m.id) } else { up_to };
        Some(Range { messages, covered_to })
    }

    /// The newest `count` messages with ids in `(after, up_to]`, in id order,
    /// as far as memory holds them.
    pub fn newest(&self, after: u64, up_to: u64, count: usize) -> Vec<Message> {
        let mut newest: Vec<Message> =
            self.recent.iter().rev().filter(|m| m.id > after && m.id <= up_to).take(count).cloned().collect();
        newest.reverse();
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, cid: &str, ts: i64) -> Message {
        Message { room: "r".into(), id, user: "u".into(), cid: cid.into(), ts, ..Message::default() }
    }

    fn append(log: &mut RoomLog, id: u64, cid: &str) -> Appended {
        log.append(message(id, cid, 1_000))
    }

    #[test]
    fn each_message_names_the_one_before() {
        let mut log = RoomLog::default();
        let Appended::New(first) = append(&mut log, 3, "a") else { panic!("new") };
        let Appended::New(second) = append(&mut log, 10, "b") else { panic!("new") };
        assert_eq!((first.prev_id, second.prev_id), (0, 3));
        assert_eq!(log.last_id(), 10);
    }

    #[test]
    fn a_repeated_cid_is_not_part_of_the_room() {
        let mut log = RoomLog::default();
        append(&mut log, 3, "a");
        assert_eq!(append(&mut log, 5, "a"), Appended::Repeat(3));
        let Appended::New(next) = append(&mut log, 7, "b") else { panic!("new") };
        assert_eq!(next.prev_id, 3, "the repeat is skipped in the chain");
    }

    #[test]
    fn sends_are_forgotten_after_the_window() {
        let mut log = RoomLog::default();
        log.append(message(1, "a", 0));
        let late = i64::try_from(DEDUP_WINDOW.as_millis()).unwrap_or_default() + 1;
        assert!(matches!(log.append(message(2, "b", late)), Appended::New(_)));
        assert!(log.first_send(&("u".into(), "a".into())).is_none());
        assert!(matches!(log.append(message(3, "a", late)), Appended::New(_)));
    }

    #[test]
    fn ranges_come_from_memory_while_it_covers_them() {
        let mut log = RoomLog::default();
        for id in 1..=100u64 {
            append(&mut log, id * 2, &id.to_string());
        }
        // The last RECENT messages are ids 74..=200 (even): covered above 72.
        assert_eq!(log.covered_from(), 72);
        assert!(log.range(70, 200, 1000).is_none());
        let range = log.range(190, 196, 1000).expect("in memory");
        assert_eq!(range.messages.iter().map(|m| m.id).collect::<Vec<_>>(), vec![192, 194, 196]);
        assert_eq!(range.covered_to, 196);
        let page = log.range(72, 200, 2).expect("in memory");
        assert_eq!(page.covered_to, 76, "a full page covers up to its last id");
        let tail = log.newest(0, 199, 3);
        assert_eq!(tail.iter().map(|m| m.id).collect::<Vec<_>>(), vec![194, 196, 198]);
    }

    #[test]
    fn an_empty_room_covers_everything() {
        let log = RoomLog::default();
        assert_eq!(log.range(0, 50, 10), Some(Range { messages: vec![], covered_to: 50 }));
    }
}
