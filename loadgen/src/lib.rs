//! Warren's protocol clients for chaos and load runs.
//!
//! - [`socket`]: a WebSocket client whose writes run on their own task; reads
//!   either on a task too (frames on a channel, so a virtual user can wait on
//!   frames, timers and signals at once) or in place by the owner.
//! - [`agent`]: one virtual user that follows the client rules of
//!   `docs/protocol.md`: `/session` before every reconnect, `join` with
//!   `since`, unacked sends resent with their `cid`, backoff with full
//!   jitter, login only after a `401`.
//! - [`ledger`]: what was acked in each room, and what each user received.
//! - [`chaos`]: the chaos run: a private stack, faults on a schedule, and the
//!   verdict.
//! - [`load`]: the load runs of `warren-load` (fan-out, idle sockets,
//!   connect storms, drains) and what they measure.

pub mod agent;
pub mod chaos;
pub mod ledger;
pub mod load;
pub mod socket;
pub mod stream;
