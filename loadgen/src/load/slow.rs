//! Slow readers for the fan-out run: sockets that join every room of the
//! run and then never read again, their TCP connection left open. The
//! gateway's queue for such a socket fills, and once it is full the gateway
//! closes the socket (1008 `slow`); nobody else may notice.
//!
//! A slow reader's socket has a 2 KiB receive buffer and announces
//! Ethernet's segment size (see [`Tuning`]), so that the kernels park some
//! 50 KiB for it, about what a real network would, instead of the ~3 MiB
//! that loopback's 64 KiB segments let the gateway's send buffer take; the
//! gateway's own queue then starts filling within seconds.
//!
//! After the run each slow reader reads what is left and says how its
//! socket ended, as far as a client can tell: a close frame, the stream
//! ending without one (a gateway abandons a write blocked on a peer that
//! does not read, so no close frame can follow it), a reset, or still open.
//! The gateways' own count of sockets closed as `slow` (their admin
//! `/metrics`, when the target has their addresses) tells the rest.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use testkit::http::Client;
use tokio::task::JoinSet;

use crate::load::{clients, progress};
use crate::socket::{self, End, Reader, Tuning, Writer};

/// A slow reader's `SO_RCVBUF`.
pub const RECV_BUFFER: u32 = 2048;
/// The segment size a slow reader announces (Ethernet's).
pub const MAX_SEGMENT: u32 = 1460;
/// How long a slow reader may take to say `welcome` and each `joined`.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);
/// After the run, a slow reader that receives nothing for this long is
/// still open (what a queue holds arrives without pauses once read).
const QUIET: Duration = Duration::from_secs(2);
/// The longest a slow reader reads after the run.
const READ_LIMIT: Duration = Duration::from_secs(30);
/// The gateways' counter of closed sockets, and the label of slow ones.
const CLOSED_METRIC: &str = "warren_gateway_sockets_closed_total{";
const SLOW_LABEL: &str = r#"reason="slow""#;

/// Who the slow readers are and where they go.
#[derive(Debug, Clone, Default)]
pub struct Cast {
    /// Each slow reader's address, source address and session cookie.
    pub logins: Vec<(SocketAddr, Option<IpAddr>, String)>,
    /// The gateways' admin addresses, for their count of slow closes.
    pub admins: Vec<SocketAddr>,
}

impl Cast {
    /// Opens every slow reader and joins it to `rooms`, after reading the
    /// gateways' count.
    pub async fn open(&self, rooms: &[String]) -> SlowReaders {
        let gateway_before = gateway_slow_closes(&self.admins).await;
        let mut tasks = JoinSet::new();
        let tuning = Tuning { recv_buffer: Some(RECV_BUFFER), max_segment: Some(MAX_SEGMENT) };
        for (front, local, cookie) in self.logins.iter().cloned() {
            let rooms = rooms.to_vec();
            tasks.spawn(async move {
                let (mut reader, writer) =
                    socket::open_tuned(front, local, &cookie, tuning).await.map_err(|e| e.to_string())?;
                let names: Vec<&str> = rooms.iter().map(String::as_str).collect();
                clients::join_all(&mut reader, &writer, &names, HANDSHAKE_LIMIT).await?;
                Ok::<_, String>((reader, writer))
            });
        }
        let mut readers = SlowReaders { sockets: Vec::new(), failed: 0, gateway_before, admins: self.admins.clone() };
        while let Some(opened) = tasks.join_next().await {
            match opened {
                Ok(Ok(socket)) => readers.sockets.push(socket),
                Ok(Err(reason)) => {
                    progress::note(&format!("a slow reader did not open: {reason}"));
                    readers.failed += 1;
                }
                Err(_) => readers.failed += 1,
            }
        }
        readers
    }
}

/// One run's slow readers, joined and not reading.
#[derive(Debug)]
pub struct SlowReaders {
    sockets: Vec<(Reader, Writer)>,
    failed: u64,
    gateway_before: Option<u64>,
    admins: Vec<SocketAddr>,
}

impl SlowReaders {
    /// Reads what is left on every slow reader, closes those still open,
    /// and reports how they ended.
    pub async fn finish(self) -> Report {
        let mut report = Report { opened: self.sockets.len() as u64, failed: self.failed, ..Report::default() };
        let mut tasks = JoinSet::new();
        for (mut reader, writer) in self.sockets {
            tasks.spawn(async move {
                let ending = tokio::time::timeout(READ_LIMIT, reader.drain(QUIET)).await;
                writer.close();
                ending.unwrap_or((0, End::Open))
            });
        }
        while let Some(ending) = tasks.join_next().await {
            let Ok((frames, end)) = ending else {
                report.broken += 1;
                continue;
            };
            report.frames_after_run += frames;
            report.count(&end);
        }
        let gateway_after = gateway_slow_closes(&self.admins).await;
        report.gateway_slow_closes = self.gateway_before.zip(gateway_after).map(|(b, a)| a.saturating_sub(b));
        progress::note(&format!(
            "slow readers: {} closed by the gateway ({} with a `slow` close frame), {} still open; gateways counted {:?} slow closes",
            report.closed_by_gateway, report.close_slow, report.still_open, report.gateway_slow_closes
        ));
        report
    }
}

/// How a run's slow readers ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Slow readers opened and joined to every room.
    pub opened: u64,
    /// Slow readers that could not be opened or joined.
    pub failed: u64,
    /// Ended by the gateway, as far as the client can tell: close frames,
    /// `eof` and `reset` together.
    pub closed_by_gateway: u64,
    /// Close frames with code 1008 and a reason starting with `slow`.
    pub close_slow: u64,
    /// Other close frames, by code and reason.
    pub close_other: BTreeMap<String, u64>,
    /// Streams that ended without a close frame (the gateway gave up a
    /// write to the slow reader, then closed the connection).
    pub eof: u64,
    /// Connections reset.
    pub reset: u64,
    /// Still open after everything queued for them was read: the gateway
    /// never closed them.
    pub still_open: u64,
    /// Reads that failed otherwise.
    pub broken: u64,
    /// Text frames read after the run: what the kernels and the gateway's
    /// queue held for them.
    pub frames_after_run: u64,
    /// Sockets the gateways closed as `slow` from the opening of the slow
    /// readers until after they were read (a normal subscriber that slow
    /// would count too); `null` without the gateways' admin addresses.
    pub gateway_slow_closes: Option<u64>,
}

impl Report {
    fn count(&mut self, end: &End) {
        match end {
            End::Close(1008, reason) if reason.starts_with("slow") => self.close_slow += 1,
            End::Close(code, reason) => *self.close_other.entry(format!("{code} {reason}")).or_default() += 1,
            End::Eof => self.eof += 1,
            End::Reset => self.reset += 1,
            End::Open => self.still_open += 1,
            End::Failed(_) => self.broken += 1,
        }
        if !matches!(end, End::Open | End::Failed(_)) {
            self.closed_by_gateway += 1;
        }
    }

    /// Adds another run's report (the gateways' count stays unknown if
    /// either is).
    pub fn add(&mut self, other: &Self) {
        self.opened += other.opened;
        self.failed += other.failed;
        self.closed_by_gateway += other.closed_by_gateway;
        self.close_slow += other.close_slow;
        for (key, count) in &other.close_other {
            *self.close_other.entry(key.clone()).or_default() += count;
        }
        self.eof += other.eof;
        self.reset += other.reset;
        self.still_open += other.still_open;
        self.broken += other.broken;
        self.frames_after_run += other.frames_after_run;
        self.gateway_slow_closes = self.gateway_slow_closes.zip(other.gateway_slow_closes).map(|(a, b)| a + b);
    }
}

/// Sockets the gateways at `admins` have closed as `slow` so far; `None`
/// when there are none, or one does not answer.
pub async fn gateway_slow_closes(admins: &[SocketAddr]) -> Option<u64> {
    if admins.is_empty() {
        return None;
    }
    let mut total = 0;
    for admin in admins {
        let reply =
            tokio::time::timeout(Duration::from_secs(5), Client::new(*admin).get("/metrics")).await.ok()?.ok()?;
        if reply.status != http::StatusCode::OK {
            return None;
        }
        total += slow_closes_in(&reply.text());
    }
    Some(total)
}

/// The sum of the slow-close counters in a Prometheus text page.
fn slow_closes_in(page: &str) -> u64 {
    let counts = page
        .lines()
        .filter(|line| line.starts_with(CLOSED_METRIC) && line.contains(SLOW_LABEL))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
    counts.sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_closes_are_read_from_metrics() {
        let page = "# TYPE warren_gateway_sockets_closed_total counter\n\
            warren_gateway_sockets_closed_total{reason=\"slow\",code=\"1008\"} 2\n\
            warren_gateway_sockets_closed_total{reason=\"normal\",code=\"1000\"} 40\n\
            warren_gateway_queue_overflows_total 2\n";
        assert_eq!(slow_closes_in(page), 2);
        assert_eq!(slow_closes_in(""), 0);
    }

    #[test]
    fn endings_are_counted_and_added() {
        let mut report = Report::default();
        for end in [
            End::Close(1008, "slow: too far behind".into()),
            End::Close(1008, "timeout: no pong".into()),
            End::Eof,
            End::Reset,
            End::Open,
        ] {
            report.count(&end);
        }
        assert_eq!((report.close_slow, report.eof, report.reset, report.still_open), (1, 1, 1, 1));
        assert_eq!(report.closed_by_gateway, 4);
        assert_eq!(report.close_other.get("1008 timeout: no pong"), Some(&1));
        let mut total = Report { gateway_slow_closes: Some(1), ..Report::default() };
        total.add(&Report { gateway_slow_closes: Some(2), ..report.clone() });
        assert_eq!((total.closed_by_gateway, total.gateway_slow_closes), (4, Some(3)));
        total.add(&report);
        assert_eq!(total.gateway_slow_closes, None, "unknown once one run does not know");
    }
}
