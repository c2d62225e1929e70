//! The hub against a fake bridge: a room is a list of messages with sparse
//! ids, history answers from it, and every request is counted.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::link::HistoryPage;
use crate::mailbox::Outbound;

/// A bridge whose rooms live in memory.
#[derive(Debug, Default)]
struct FakeBridge {
    /// Every message of every room, in id order, `prev_id` set.
    stored: Mutex<Vec<Message>>,
    subscribes: AtomicUsize,
    histories: AtomicUsize,
    /// While set, history requests wait for this notice.
    gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl FakeBridge {
    /// Stores a message in `room` with `id` and returns it.
    fn store(&self, room: &str, id: u64, text: &str) -> Message {
        let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        let prev_id = stored.iter().filter(|m| m.room == room).map(|m| m.id).max().unwrap_or(0);
        let message = Message {
            room: room.to_owned(),
            id,
            prev_id,
            user: "alice".into(),
            text: text.to_owned(),
            cid: format!("c-{id}"),
            ..Message::default()
        };
        stored.push(message.clone());
        message
    }

    /// What `Subscribed` would say: the room's newest id.
    fn newest(&self, room: &str) -> u64 {
        let stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        stored.iter().filter(|m| m.room == room).map(|m| m.id).max().unwrap_or(0)
    }
}

impl Bridge for FakeBridge {
    fn subscribe(&self, _room: &str) {
        self.subscribes.fetch_add(1, Ordering::Relaxed);
    }

    fn unsubscribe(&self, _room: &str) {}

    fn history(&self, room: &str, after: u64, up_to: u64, newest: u32) -> BoxFuture<'static, HistoryResult> {
        self.histories.fetch_add(1, Ordering::Relaxed);
        let mut messages: Vec<Message> = self
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|m| m.room == room && m.id > after && m.id <= up_to)
            .cloned()
            .collect();
        if newest > 0 {
            let skip = messages.len().saturating_sub(usize::try_from(newest).unwrap_or(usize::MAX));
            messages.drain(..skip);
        }
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner).clone();
        async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Ok(HistoryPage { messages, covered_to: up_to })
        }
        .boxed()
    }
}

fn hub() -> (Arc<Hub>, Arc<FakeBridge>) {
    let bridge = Arc::new(FakeBridge::default());
    (Hub::new(bridge.clone(), TaskTracker::new()), bridge)
}

fn mailbox() -> Mailbox {
    Mailbox::new(10_000, 10 << 20)
}

/// The ids of the `message` frames queued so far.
fn ids(mailbox: &Mailbox) -> Vec<u64> {
    let mut ids = Vec::new();
    mailbox.take(usize::MAX, |frame| {
        if let Outbound::Text(bytes) = frame
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && value["type"] == "message"
        {
            ids.push(value["id"].as_u64().unwrap_or_default());
        }
    });
    ids
}

/// Joins, answering the subscription as the bridge would when it is new.
async fn join(hub: &Arc<Hub>, bridge: &FakeBridge, room: &str, socket: SocketId, since: Option<u64>) -> Mailbox {
    let ticket = {
        let (hub, room) = (hub.clone(), room.to_owned());
        tokio::spawn(async move { hub.subscribe(&room).await })
    };
    tokio::task::yield_now().await;
    if !ticket.is_finished() {
        hub.subscribed(room, bridge.newest(room));
    }
    let ticket = ticket.await.expect("task").expect("subscribed");
    let mailbox = mailbox();
    hub.join(ticket, socket, mailbox.clone(), since);
    mailbox
}

/// Lets spawned fills run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_plain_join_gets_the_tail_then_live_messages() {
    let (hub, bridge) = hub();
    for n in 1..=60u64 {
        bridge.store("r", n * 7, "old");
    }
    let alice = join(&hub, &bridge, "r", 1, None).await;
    settle().await;
    let tail = ids(&alice);
    assert_eq!(tail, (11..=60u64).map(|n| n * 7).collect::<Vec<_>>(), "the newest 50");
    hub.deliver(&bridge.store("r", 500, "live"));
    assert_eq!(ids(&alice), vec![500]);
}

#[tokio::test]
async fn a_prev_id_above_the_cursor_fills_the_gap() {
    let (hub, bridge) = hub();
    let alice = join(&hub, &bridge, "r", 1, None).await;
    hub.deliver(&bridge.store("r", 3, "a"));
    assert_eq!(ids(&alice), vec![3]);
    // 9 is stored but never streamed (say, during a bridge move); 15 names it.
    bridge.store("r", 9, "missed");
    hub.deliver(&bridge.store("r", 15, "b"));
    settle().await;
    assert_eq!(ids(&alice), vec![9, 15], "the gap first, then what was held");
}

#[tokio::test]
async fn a_resume_gets_exactly_what_was_missed() {
    let (hub, bridge) = hub();
    for id in [2, 5, 11, 30] {
        bridge.store("r", id, "x");
    }
    let bob = join(&hub, &bridge, "r", 1, Some(5)).await;
    settle().await;
    assert_eq!(ids(&bob), vec![11, 30]);
    let ahead = join(&hub, &bridge, "r", 2, Some(40)).await;
    hub.deliver(&bridge.store("r", 41, "y"));
    assert_eq!(ids(&ahead), vec![41]);
}

#[tokio::test]
async fn a_crowd_shares_one_history_read_and_then_memory() {
    let (hub, bridge) = hub();
    for n in 1..=80u64 {
        bridge.store("big", n * 3, "old");
    }
    let gate = Arc::new(tokio::sync::Notify::new());
    *bridge.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(gate.clone());
    let mut members = Vec::new();
    for socket in 0..200 {
        members.push(join(&hub, &bridge, "big", socket, None).await);
    }
    settle().await;
    gate.notify_waiters();
    settle().await;
    assert_eq!(bridge.histories.load(Ordering::Relaxed), 1, "overlapping identical reads are one");
    *bridge.gate.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let late = join(&hub, &bridge, "big", 999, None).await;
    settle().await;
    assert_eq!(bridge.histories.load(Ordering::Relaxed), 1, "a later joiner is served from memory");
    for mailbox in members.iter().chain([&late]) {
        assert_eq!(ids(mailbox).len(), 50);
    }
    assert_eq!(bridge.subscribes.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_room_moved_to_another_bridge_fills_its_members() {
    let (hub, bridge) = hub();
    let alice = join(&hub, &bridge, "r", 1, None).await;
    hub.deliver(&bridge.store("r", 4, "a"));
    bridge.store("r", 8, "sent while moving");
    hub.subscribed("r", 8);
    settle().await;
    assert_eq!(ids(&alice), vec![4, 8]);
}

#[tokio::test(start_paused = true)]
async fn a_room_no_bridge_answers_is_an_error_and_goes_away() {
    let (hub, _bridge) = hub();
    let refused = hub.subscribe("r").await;
    assert_eq!(refused.err(), Some(JoinError::Unavailable));
    assert!(hub.rooms().is_empty(), "an unused ticket lets the room go");
}

#[tokio::test]
async fn repeated_sends_move_cursors_without_a_frame() {
    let (hub, bridge) = hub();
    let alice = join(&hub, &bridge, "r", 1, None).await;
    let first = bridge.store("r", 2, "hi");
    hub.deliver(&first);
    let mut repeat = bridge.store("r", 6, "hi");
    repeat.cid = first.cid.clone();
    hub.deliver(&repeat);
    hub.deliver(&bridge.store("r", 9, "next"));
    assert_eq!(ids(&alice), vec![2, 9]);
}

#[tokio::test]
async fn a_refused_subscription_is_an_error_not_a_silent_room() {
    let (hub, _bridge) = hub();
    let waiting = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.subscribe("r").await })
    };
    tokio::task::yield_now().await;
    let refusal = Refusal { code: "unavailable".into(), message: "partition 3 cannot be read".into(), retryable: true };
    hub.subscribe_failed("r", refusal.clone());
    let refused = waiting.await.expect("task");
    assert_eq!(refused.err(), Some(JoinError::Refused(refusal)));
    assert!(hub.rooms().is_empty());
}
