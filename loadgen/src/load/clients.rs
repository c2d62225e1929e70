//! What the load runs' clients share: logins, source addresses, the few
//! frame fields they read, failure counts and the clock in the messages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Deserialize;
use testkit::http::Client;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::load::target::Target;
use crate::socket::{self, Incoming, Reader, Refused, Writer};

/// Sockets per source address by default: well below the ~28 k ports one
/// address reaches towards one server port.
pub const SOCKETS_PER_SOURCE: usize = 10_000;
/// The first source address; the next ones follow (127.0.0.3, ...).
pub const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Now, in µs since the Unix epoch: the clock carried in messages (sender
/// and receiver share the machine, so they share the clock).
pub fn unix_micros() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_micros()).unwrap_or(u64::MAX)
}

/// The local addresses sockets are opened from, in turn.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    addrs: Vec<IpAddr>,
}

impl Sources {
    /// `count` addresses from [`FIRST_SOURCE`] on; none (the kernel's
    /// choice, 127.0.0.1) for 0.
    ///
    /// # Errors
    /// When they would leave 127.0.0.0/8.
    pub fn new(count: usize) -> anyhow::Result<Self> {
        let first = u32::from(FIRST_SOURCE);
        let last = first + u32::try_from(count).unwrap_or(u32::MAX).saturating_sub(1);
        if count > 0 && last > u32::from(Ipv4Addr::new(127, 255, 255, 254)) {
            bail!("{count} source addresses leave 127.0.0.0/8");
        }
        let addrs = (0..count).map(|i| IpAddr::V4(Ipv4Addr::from(first + i as u32))).collect();
        Ok(Self { addrs })
    }

    /// Enough addresses for `sockets` (one per [`SOCKETS_PER_SOURCE`]).
    ///
    /// # Errors
    /// As [`Sources::new`].
    pub fn for_sockets(sockets: usize) -> anyhow::Result<Self> {
        Self::new(sockets.div_ceil(SOCKETS_PER_SOURCE).max(1))
    }

    /// The address of socket `index`.
    pub fn pick(&self, index: usize) -> Option<IpAddr> {
        (!self.addrs.is_empty()).then(|| self.addrs[index % self.addrs.len()])
    }

    /// How many addresses are used.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the kernel picks the address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// Fails early when this process cannot hold `sockets` more descriptors.
///
/// # Errors
/// When the open-files limit is too low.
pub fn check_fd_budget(sockets: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(soft) = soft
        && sockets + 200 > soft
    {
        bail!(
            "{sockets} sockets need more than this process's {soft} open files: split the run over \
             several warren-load processes, or raise the limit"
        );
    }
    Ok(())
}

/// Logs every user in (`POST /login`, a few tries each), `concurrency` at a
/// time, user `i` at `target.front(i)`; returns their cookies in order.
///
/// # Errors
/// When a user cannot log in after its tries.
pub async fn login_all(target: &Target, users: &[String], concurrency: usize) -> anyhow::Result<Vec<String>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, user) in users.iter().enumerate() {
        let (front, user, permits) = (target.front(index), user.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut client = Client::new(front);
            let mut last = None;
            for attempt in 0..5_u32 {
                match client.login(&user).await {
                    Ok(_) => return Ok((index, client.cookie.unwrap_or_default())),
                    Err(error) => last = Some(error),
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no try made"))).with_context(|| format!("log in {user}"))
        });
    }
    let mut cookies = vec![String::new(); users.len()];
    while let Some(done) = tasks.join_next().await {
        let (index, cookie) = done.context("a login task panicked")??;
        cookies[index] = cookie;
    }
    Ok(cookies)
}

/// Where one socket connects, from which local address, as whom.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The address it connects to.
    pub front: SocketAddr,
    /// Its source address (the kernel's choice when `None`).
    pub local: Option<IpAddr>,
    /// Its user's session cookie.
    pub cookie: String,
}

/// Logged-in users, and where their sockets go.
#[derive(Debug)]
pub struct Logins {
    fronts: Vec<SocketAddr>,
    cookies: Vec<String>,
    sources: Sources,
}

impl Logins {
    /// Logs `users` in, `concurrency` at a time ([`login_all`]).
    ///
    /// # Errors
    /// When a user cannot log in.
    pub async fn new(target: &Target, users: &[String], concurrency: usize, sources: Sources) -> anyhow::Result<Self> {
        let cookies = login_all(target, users, concurrency).await?;
        let fronts = (0..users.len()).map(|user| target.front(user)).collect();
        Ok(Self { fronts, cookies, sources })
    }

    /// Socket `socket` of user `user`: every socket of a user goes where
    /// the user logged in (so that straight at several gateways, a user's
    /// sockets still meet one gateway and its per-user limit), each from
    /// its own turn of the source addresses.
    pub fn conn(&self, user: usize, socket: usize) -> Conn {
        Conn { front: self.fronts[user], local: self.sources.pick(socket), cookie: self.cookies[user].clone() }
    }

    /// How many source addresses the sockets use.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// The fields of a server frame that the load runs read; borrowed from
/// the payload where it has no escapes.
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    /// `type`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// A message's or an ack's id.
    #[serde(default)]
    pub id: Option<u64>,
    /// A message's text.
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    /// The send an ack or error answers.
    #[serde(default, borrow)]
    pub cid: Option<Cow<'a, str>>,
    /// An error's code.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    /// The room of a message, `joined`, `left` or presence frame.
    #[serde(default, borrow)]
    pub room: Option<Cow<'a, str>>,
    /// How long a `rate_limited` error asks the client to wait.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// Parses a text frame; `None` when it is not such an object.
pub fn parse(payload: &[u8]) -> Option<ServerFrame<'_>> {
    serde_json::from_slice(payload).ok()
}

/// The send time a message's text starts with (`t=<µs since the epoch>`,
/// then a space or the end).
pub fn stamp_of(text: &str) -> Option<u64> {
    text.split(' ').next()?.strip_prefix("t=")?.parse().ok()
}

/// Opens a socket and waits for `welcome`, trying again while the gateway
/// turns the upgrade away for admission (429: handshakes per source
/// address; 503: sockets per user or per gateway), with growing, jittered
/// pauses, until `limit` has passed. Against a stack that keeps its default
/// limits (500 handshakes/s per client address, 1,000 in flight per
/// gateway) this is what paces a crowd: as fast as the gateways admit,
/// never faster. Returns the socket and how many tries were
/// turned away.
///
/// # Errors
/// A short reason when the upgrade fails otherwise, the socket closes before
/// `welcome`, or `limit` passes.
pub async fn open_admitted(conn: &Conn, limit: Duration) -> Result<(Reader, Writer, u32), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut refused = 0_u32;
    loop {
        match socket::open(conn.front, conn.local, &conn.cookie).await {
            Ok((mut reader, writer)) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                await_type(&mut reader, "welcome", left.max(Duration::from_secs(1))).await?;
                return Ok((reader, writer, refused));
            }
            Err(Refused::Status(status @ (429 | 503))) => {
                refused += 1;
                let ceiling = 50_u64 << refused.min(6);
                let pause = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(format!("upgrade answered {status} for {limit:?}"));
                }
                tokio::time::sleep(pause).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Reads until a frame of type `kind`, within `limit`.
///
/// # Errors
/// A short reason when the socket closes, or `limit` passes first.
pub async fn await_type(reader: &mut Reader, kind: &str, limit: Duration) -> Result<(), String> {
    let wait = async {
        loop {
            match reader.next().await {
                Incoming::Text(payload) => {
                    if let Some(frame) = parse(&payload) {
                        if frame.kind == kind {
                            return Ok(());
                        }
                        if frame.kind == "error" {
                            return Err(format!("error {}", frame.code.unwrap_or_default()));
                        }
                    }
                }
                Incoming::Closed(code) => return Err(format!("closed ({code:?}) before {kind}")),
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| Err(format!("no {kind} within {limit:?}")))
}

/// Waits for `welcome`, then joins `rooms` one after the other, each
/// within `limit`.
///
/// # Errors
/// A short reason when the socket closes, a join is refused, or `limit`
/// passes first.
pub async fn join_all(reader: &mut Reader, writer: &Writer, rooms: &[&str], limit: Duration) -> Result<(), String> {
    await_type(reader, "welcome", limit).await?;
    for room in rooms {
        writer.send(&serde_json::json!({ "type": "join", "room": room }));
        await_type(reader, "joined", limit).await?;
    }
    Ok(())
}

/// Failures by reason, from many tasks.
#[derive(Debug, Default)]
pub struct Failures {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Failures {
    /// Counts one failure.
    pub fn add(&self, reason: impl Into<String>) {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner).entry(reason.into()).or_default() += 1;
    }

    /// Failures so far, by reason.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many in all.
    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).values().sum()
    }
}

/// A set of message ids, as a bitmap (ids of a fresh room start at 1 and
/// are dense); ids past 2^26 go to a side set.
#[derive(Debug, Default, Clone)]
pub struct IdSet {
    words: Vec<u64>,
    far: std::collections::BTreeSet<u64>,
}

const DENSE_IDS: u64 = 1 << 26;

impl IdSet {
    /// Adds an id; false when it was already there.
    pub fn insert(&mut self, id: u64) -> bool {
        if id >= DENSE_IDS {
            return self.far.insert(id);
        }
        let (word, bit) = ((id / 64) as usize, id % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        fresh
    }

    /// Whether `id` is there.
    pub fn contains(&self, id: u64) -> bool {
        if id >= DENSE_IDS {
            return self.far.contains(&id);
        }
        self.words.get((id / 64) as usize).is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    /// How many ids.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() + self.far.len() as u64
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of these ids `other` lacks.
    pub fn missing_from(&self, other: &Self) -> u64 {
        let dense: u64 = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum();
        dense + self.far.difference(&other.far).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_sets() {
        let (mut all, mut seen) = (IdSet::default(), IdSet::default());
        for id in [1, 2, 3, 64, 65, 1 << 27] {
            assert!(all.insert(id));
        }
        assert!(!all.insert(3));
        assert!(all.contains(65) && all.contains(1 << 27) && !all.contains(66) && !all.contains(1 << 30));
        for id in [1, 3, 65] {
            seen.insert(id);
        }
        assert_eq!(all.len(), 6);
        assert_eq!(all.missing_from(&seen), 3);
        assert_eq!(seen.missing_from(&all), 0);
    }

    #[test]
    fn frames_and_sources() {
        let frame = parse(br#"{"type":"message","room":"r","id":7,"user":"u","text":"t=1 e=0","ts":1,"cid":"c"}"#)
            .expect("parses");
        assert_eq!((frame.kind.as_ref(), frame.id, frame.text.as_deref()), ("message", Some(7), Some("t=1 e=0")));
        assert!(parse(b"[1]").is_none());
        assert_eq!(stamp_of("t=1700000000000000 e=3"), Some(1_700_000_000_000_000));
        assert_eq!(stamp_of("t=12"), Some(12));
        assert_eq!(stamp_of("hello"), None);
        let error = parse(br#"{"type":"error","code":"rate_limited","cid":"c","retry_after_ms":40}"#).expect("parses");
        assert_eq!((error.code.as_deref(), error.retry_after_ms), (Some("rate_limited"), Some(40)));
        let sources = Sources::for_sockets(25_000).expect("fits");
        assert_eq!(sources.len(), 3);
        assert_eq!(sources.pick(4), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
        assert!(Sources::new(0).expect("none").pick(0).is_none());
        assert!(Sources::new(1 << 25).is_err());
    }
}
