//! Every close the gateway decides reaches a client that writes without
//! reading as a close frame with its code and reason, once the client reads:
//! one test per close (flood, slow, idle, session ended, drain). Each client
//! writes (sends or pings) and reads nothing until the gateway has decided
//! the close, then reads everything up to the close frame. The idle close is
//! for a client that sent nothing at all, so that one neither writes nor
//! reads. When a close frame cannot arrive, and what the client sees then,
//! is in `docs/hardening.md` ("What a closed client sees").

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use support::raw::{self, Closed, masked};
use support::{one_gateway, one_gateway_own_broker, open};
use testkit::http::Client;
use testkit::ws::Socket;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often a writing client pings: far below any limit (pings have none).
const PING_EVERY: Duration = Duration::from_millis(50);
/// Messages the slow test's sender has in flight: 40 KB, well within the
/// 128 KiB queue that the sender has too.
const BATCH: usize = 10;
/// The longest a test waits for a metric to show what it waits for.
const METRIC_TIMEOUT: Duration = Duration::from_secs(20);

/// A flooder that writes 400 sends back to back before it reads anything
/// (the close is decided at the 50th refused send in a row) gets 1008 and
/// the reason. (Not necessarily the refusals: the close frame goes before
/// whatever is still queued.)
#[tokio::test]
async fn flood_a_client_that_writes_400_sends_before_reading_gets_1008_rate_limit() -> anyhow::Result<()> {
    let stack = one_gateway(&[]).await?;
    let (addr, admin) = (stack.gateways[0].addr, stack.gateways[0].admin);
    let cookie = login(addr, "blind-flooder").await?;
    let mut stream = raw::connect(addr, &cookie).await?;
    let room = testkit::unique("blind");
    let mut flood = masked(true, 0x1, json!({"type": "join", "room": room}).to_string().as_bytes());
    for n in 0..400 {
        let send = json!({"type": "send", "room": room, "text": "x", "cid": format!("c{n}")}).to_string();
        flood.extend(masked(true, 0x1, send.as_bytes()));
    }
    // Written whole, as a client that does not read meanwhile would.
    stream.write_all(&flood).await?;

    let closed = raw::frames_until_close(&mut stream).await?;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "rate limit: too many sends"));
    wait_for_metric(admin, r#"warren_gateway_sockets_closed_total{reason="abuse",code="1008"}"#, 1.0).await?;
    Ok(())
}

/// A member that keeps writing pings but stops reading while another member
/// fills its queue (128 KiB) is closed as slow. Once the gateway has decided
/// (its queue overflowed), it reads: what the gateway had written, in order,
/// then 1008 and the reason. It must start reading within the gateway's
/// 1 s close timeout, which is why it watches the overflow counter (moved
/// when the queue overflows) rather than the close counter (moved after the
/// close frame went out, which it cannot while nobody reads).
#[tokio::test]
async fn slow_a_member_that_writes_but_stops_reading_gets_what_was_written_then_1008_slow() -> anyhow::Result<()> {
    // Megabytes until the queue overflows: on a RabbitMQ node of its own.
    let (stack, _rabbit) = one_gateway_own_broker(&[
        ("GATEWAY_MAX_QUEUE_BYTES", "131072"),
        ("GATEWAY_SEND_RATE", "10000"),
        ("GATEWAY_USER_SEND_RATE", "10000"),
    ])
    .await?;
    let (addr, admin) = (stack.gateways[0].addr, stack.gateways[0].admin);
    let cookie = login(addr, "slowpoke").await?;
    let room = testkit::unique("slow");
    let (mut read, mut write) = raw::connect(addr, &cookie).await?.into_split();
    write.write_all(&masked(true, 0x1, json!({"type": "join", "room": room}).to_string().as_bytes())).await?;
    let pinger = Pinger::start(write);
    let mut sender = open(addr, &cookie).await?;
    sender.join(&room, None).await?;

    tokio::select! {
        filled = fill(&mut sender, &room) => bail!("the slow socket never overflowed: {filled:?}"),
        overflowed = wait_for_metric(admin, "warren_gateway_queue_overflows_total", 1.0) => overflowed?,
    }
    let (_write, pings) = pinger.stop().await?;
    let closed = raw::frames_until_close(&mut read).await?;

    assert_eq!((closed.code, closed.reason.as_str()), (1008, "slow: too far behind"));
    let texts = texts(&closed)?;
    assert_eq!(texts.first().map(|frame| &frame["type"]), Some(&json!("welcome")));
    let ids: Vec<u64> =
        texts.iter().filter(|frame| frame["type"] == "message").filter_map(|m| m["id"].as_u64()).collect();
    assert!(!ids.is_empty(), "messages before the close");
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in order: {ids:?}");
    assert!(pings > 0, "the client wrote while it did not read");
    wait_for_metric(admin, r#"warren_gateway_sockets_closed_total{reason="slow",code="1008"}"#, 1.0).await?;
    Ok(())
}

/// A client that neither writes nor reads is pinged, and closed once it has
/// been silent for the idle timeout; when it reads, it finds the pings, then
/// 1008 and the reason.
#[tokio::test]
async fn idle_a_client_that_neither_writes_nor_reads_gets_its_pings_then_1008_no_pong() -> anyhow::Result<()> {
    let stack = one_gateway(&[("GATEWAY_PING_INTERVAL", "300ms"), ("GATEWAY_IDLE_TIMEOUT", "1s")]).await?;
    let (addr, admin) = (stack.gateways[0].addr, stack.gateways[0].admin);
    let cookie = login(addr, "mute").await?;
    let mut stream = raw::connect(addr, &cookie).await?;

    wait_for_metric(admin, r#"warren_gateway_sockets_closed_total{reason="idle",code="1008"}"#, 1.0).await?;
    let closed = raw::frames_until_close(&mut stream).await?;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "timeout: no pong"));
    assert!(closed.frames.iter().any(|(opcode, _)| *opcode == 0x9), "pinged before the close: {closed:?}");
    Ok(())
}

/// A client that keeps writing pings while its login is logged out (by
/// another HTTP client with the same cookie) reads its pongs, then 1008 and
/// the reason.
#[tokio::test]
async fn session_ended_a_client_writing_through_a_logout_gets_1008_session_ended() -> anyhow::Result<()> {
    let stack = one_gateway(&[]).await?;
    let (addr, admin) = (stack.gateways[0].addr, stack.gateways[0].admin);
    let cookie = login(addr, "leaving").await?;
    let (mut read, write) = raw::connect(addr, &cookie).await?.into_split();
    let pinger = Pinger::start(write);
    wait_for_metric(admin, "warren_gateway_sockets_open", 1.0).await?;

    let mut other = Client::new(addr);
    other.cookie = Some(cookie);
    let logout = other.request(http::Method::POST, "/logout", None).await?;
    assert_eq!(logout.status, http::StatusCode::SEE_OTHER);
    wait_for_metric(admin, r#"warren_gateway_sockets_closed_total{reason="session_ended",code="1008"}"#, 1.0).await?;
    let (_write, pings) = pinger.stop().await?;

    let closed = raw::frames_until_close(&mut read).await?;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "session ended"));
    let pongs = texts(&closed)?.iter().filter(|frame| frame["type"] == "pong").count();
    assert!(pongs > 0 && pings > 0, "{pings} pings written, {pongs} pongs read");
    Ok(())
}

/// A client that keeps writing pings through its gateway's SIGTERM, ignoring
/// the `reconnect` notice, reads the notice, then 1012 and the reason; the
/// gateway exits cleanly.
#[tokio::test]
async fn drain_a_client_writing_through_sigterm_gets_the_notice_then_1012() -> anyhow::Result<()> {
    let mut stack = one_gateway(&[]).await?;
    let gateway = &mut stack.gateways[0];
    let (addr, admin) = (gateway.addr, gateway.admin);
    let cookie = login(addr, "draining").await?;
    let (mut read, write) = raw::connect(addr, &cookie).await?.into_split();
    let pinger = Pinger::start(write);
    wait_for_metric(admin, "warren_gateway_sockets_open", 1.0).await?;

    gateway.process.signal("TERM").await?;
    // The close comes at the end of the 2 s drain window. The admin port
    // answers until the socket is gone, about a second later; should this
    // test miss that, the gateway's exit says the same.
    let closing = wait_for_metric(admin, r#"warren_gateway_sockets_closed_total{reason="restart",code="1012"}"#, 1.0);
    let mut exit = None;
    tokio::select! {
        seen = closing => seen?,
        code = gateway.process.wait(METRIC_TIMEOUT) => exit = Some(code?),
    }
    match pinger.stop().await {
        Ok((_write, pings)) => assert!(pings > 0, "the client wrote while it did not read"),
        // The gateway is gone: the pings written since were answered with a reset.
        Err(_) if exit.is_some() => {}
        Err(error) => return Err(error),
    }

    let closed = raw::frames_until_close(&mut read).await?;
    assert_eq!((closed.code, closed.reason.as_str()), (1012, "server restarting"));
    let texts = texts(&closed)?;
    assert!(texts.iter().any(|frame| frame["type"] == "reconnect"), "the notice came first: {texts:?}");
    let exit = match exit {
        Some(code) => code,
        None => gateway.process.wait(METRIC_TIMEOUT).await.context("gateway exits")?,
    };
    assert_eq!(exit, Some(0));
    Ok(())
}

/// Logs `user` in at `addr`; returns the session cookie.
async fn login(addr: SocketAddr, user: &str) -> anyhow::Result<String> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    client.cookie.context("cookie")
}

/// The text frames of `closed`, as JSON.
fn texts(closed: &Closed) -> anyhow::Result<Vec<Value>> {
    let texts = closed.frames.iter().filter(|(opcode, _)| *opcode == 0x1);
    texts.map(|(_, payload)| serde_json::from_slice(payload).context("a text frame that is not JSON")).collect()
}

/// Sends 4,000-character messages to `room`, [`BATCH`] at a time, up to
/// 40 MB in all (more than loopback's socket buffers and any queue). Each
/// batch is acked and read back before the next: the sender is a member
/// too, with the same small queue, and must never be the one too far
/// behind. Returns only when the 40 MB run out.
async fn fill(sender: &mut Socket, room: &str) -> anyhow::Result<()> {
    let text = "y".repeat(4000);
    for batch in 0..40_000_000 / (BATCH * 4000) {
        for n in 0..BATCH {
            sender.send(&json!({"type": "send", "room": room, "text": text, "cid": format!("s{batch}-{n}")})).await?;
        }
        let (mut acks, mut messages) = (0, 0);
        while acks < BATCH || messages < BATCH {
            let frame = sender.next_matching(|f| f["type"] == "ack" || f["type"] == "message").await;
            match frame.with_context(|| format!("batch {batch}: {acks} acks, {messages} messages"))?["type"].as_str() {
                Some("ack") => acks += 1,
                _ => messages += 1,
            }
        }
        sender.discard_kept();
    }
    Ok(())
}

/// Waits until the gateway's `/metrics` at `admin` shows `series` at
/// `value` or more, within [`METRIC_TIMEOUT`].
async fn wait_for_metric(admin: SocketAddr, series: &str, value: f64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + METRIC_TIMEOUT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(reply) = Client::new(admin).get("/metrics").await {
            let text = reply.text();
            last = text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok());
            if last.is_some_and(|seen| seen >= value) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{series} is {last:?} after {METRIC_TIMEOUT:?}, not {value}")
}

/// A client's writing half that sends `{"type":"ping"}` every
/// [`PING_EVERY`] until stopped; the test reads the other half when it
/// chooses to.
#[derive(Debug)]
struct Pinger {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<(OwnedWriteHalf, usize)>>,
}

impl Pinger {
    fn start(mut out: OwnedWriteHalf) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let ping = masked(true, 0x1, br#"{"type":"ping"}"#);
            let mut ticks = tokio::time::interval(PING_EVERY);
            let mut sent = 0;
            loop {
                tokio::select! {
                    _ = &mut stopped => return Ok((out, sent)),
                    _ = ticks.tick() => {}
                }
                out.write_all(&ping).await?;
                sent += 1;
            }
        });
        Self { stop, task }
    }

    /// Stops writing; returns the writing half, still open, and how many
    /// pings went out.
    ///
    /// # Errors
    /// When a write failed: the gateway ended the connection while the client
    /// was still writing.
    async fn stop(self) -> anyhow::Result<(OwnedWriteHalf, usize)> {
        let _ = self.stop.send(());
        self.task.await?.context("a ping could not be written")
    }
}
