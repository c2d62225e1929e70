use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Whether `room` is a room name: `[a-z0-9_-]{1,64}`. Gateways refuse
/// other names from clients, bridges from gateways.
pub fn is_valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// How long ago a message's `ts` (ms since the Unix epoch, the bridge's
/// clock) was; zero for a time ahead of this clock.
pub fn age_of(ts_millis: i64) -> Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(Duration::from_millis(u64::try_from(ts_millis).unwrap_or_default()))
}

/// A send's identity for de-duplication: who sent it and its client id.
pub type SendKey = (String, String);

/// The first message id of each recent send (user, cid) of one room, so
/// that a send repeated by a client (after a lost ack) is recognised. At
/// most `MAX` are remembered, and none older than `WINDOW_MS` (message time,
/// ms) behind the newest: the bridge bounds both (its answer to a resend
/// must be deterministic), a gateway only the count (`WINDOW_MS` =
/// `i64::MAX`).
#[derive(Debug, Default)]
pub struct RecentSends<const MAX: usize, const WINDOW_MS: i64> {
    first: HashMap<SendKey, u64>,
    /// The remembered keys with their message time, oldest first.
    order: VecDeque<(SendKey, i64)>,
}

impl<const MAX: usize, const WINDOW_MS: i64> RecentSends<MAX, WINDOW_MS> {
    /// The first id remembered under `key`.
    pub fn first(&self, key: &SendKey) -> Option<u64> {
        self.first.get(key).copied()
    }

    /// Remembers that message `id`, sent at `ts`, came under `key`, unless a
    /// message came under it before: then that one's id is returned and
    /// nothing changes.
    pub fn remember(&mut self, key: SendKey, id: u64, ts: i64) -> Option<u64> {
        if let Some(&first) = self.first.get(&key) {
            return Some(first);
        }
        while let Some((oldest, at)) = self.order.front() {
            if self.order.len() < MAX && ts.saturating_sub(*at) <= WINDOW_MS {
                break;
            }
            self.first.remove(oldest);
            self.order.pop_front();
        }
        self.first.insert(key.clone(), id);
        self.order.push_back((key, ts));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cid: &str) -> SendKey {
        ("ann".to_owned(), cid.to_owned())
    }

    #[test]
    fn a_repeated_send_names_the_first_message() {
        let mut sends = RecentSends::<8, { i64::MAX }>::default();
        assert_eq!(sends.remember(key("a"), 1, 0), None);
        assert_eq!(sends.remember(key("b"), 2, 0), None);
        assert_eq!(sends.remember(key("a"), 3, 0), Some(1));
        assert_eq!(sends.first(&key("a")), Some(1));
        assert_eq!(sends.first(&("bob".to_owned(), "a".to_owned())), None, "keys are per user");
    }

    #[test]
    fn sends_are_forgotten_past_the_count_or_the_window() {
        let mut counted = RecentSends::<2, { i64::MAX }>::default();
        for (n, cid) in ["a", "b", "c"].into_iter().enumerate() {
            counted.remember(key(cid), n as u64, 0);
        }
        assert_eq!((counted.first(&key("a")), counted.first(&key("b"))), (None, Some(1)), "the oldest goes");
        let mut timed = RecentSends::<100, 1_000>::default();
        timed.remember(key("a"), 1, 0);
        timed.remember(key("b"), 2, 1_000);
        assert_eq!(timed.first(&key("a")), Some(1), "exactly the window old: kept");
        timed.remember(key("c"), 3, 1_001);
        assert_eq!((timed.first(&key("a")), timed.first(&key("b"))), (None, Some(2)), "older than the window: gone");
    }

    #[test]
    fn room_names() {
        assert!(is_valid_room("lobby"));
        assert!(is_valid_room("a-b_c-9"));
        assert!(is_valid_room(&"x".repeat(64)));
        assert!(!is_valid_room(""));
        assert!(!is_valid_room(&"x".repeat(65)));
        assert!(!is_valid_room("Lobby"));
        assert!(!is_valid_room("lob.by"));
    }

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age_of(i64::MAX), Duration::ZERO);
        assert!(age_of(0) > Duration::from_secs(50 * 365 * 86_400));
    }
}
