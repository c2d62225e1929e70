//! `warren-load`: bounded load runs against a Warren stack, each printing a
//! progress line per second on stderr and a JSON summary on stdout.
//!
//! - [`fanout`]: subscribers in rooms, publishers at a set rate (or rising
//!   rates until saturation); deliveries/s, end-to-end latency, missing and
//!   duplicate messages.
//! - [`idle`]: many authenticated sockets opened and held; setup rate,
//!   failures, the gateway's RSS per socket.
//! - [`storm`]: logged-in clients all connecting at once; handshakes/s and
//!   time to `welcome`.
//! - [`drain`]: clients on one gateway, which is sent SIGTERM; time until
//!   all are back and receiving, messages missed.
//! - [`rooms`]: many rooms of a few members, and idle rooms; joins answered,
//!   one message per room delivered to every member, and what the broker
//!   holds before and after.
//! - [`crowd`]: many members joining one room while publishers send into
//!   it; latency, messages missing per member, presence and `joined` costs.
//!
//! What they share:
//!
//! - [`target`]: where the clients go (given addresses, or a stack of our
//!   own started with `testkit`) and which processes to measure.
//! - [`clients`]: logins, source addresses, minimal frame parsing, clocks.
//! - [`procs`]: CPU time and RSS of processes, from `/proc`.
//! - [`broker`]: the RabbitMQ node's descriptors, channels, queues, memory.
//! - [`scrape`]: the gateways' own counters, from their `/metrics`.
//! - [`slow`]: slow readers (sockets that stop reading) and how they ended.
//! - [`histogram`]: a lock-free latency histogram.
//! - [`progress`]: the line per second.
//! - [`summary`]: medians over runs.
//! - [`report`]: `docs/benchmarks.md`'s tables from the summaries
//!   `scripts/bench` kept (`warren-load report`).
//! - [`cli`]: the command line of `warren-load`.
//!
//! Every run is bounded in count and time and talks to loopback addresses
//! only (the target addresses are checked).

pub mod broker;
pub mod cli;
pub mod clients;
pub mod crowd;
pub mod drain;
pub mod fanout;
pub mod histogram;
pub mod idle;
pub mod procs;
pub mod progress;
pub mod report;
pub mod rooms;
pub mod scrape;
pub mod slow;
pub mod storm;
pub mod summary;
pub mod target;
