//! Presence in Redis: the Lua scripts that change it atomically, the task
//! that writes this gateway's entries and keeps its heartbeat, and the sweep
//! that removes the entries of gateways whose heartbeat expired.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `warren:{presence}:room:<room>` | hash | user → how many gateways hold a socket of the user in the room |
//! | `warren:{presence}:gw:<owner>` | string, TTL | this gateway process is alive |
//! | `warren:{presence}:gw:<owner>:entries` | set | `<room>\|<user>` pairs this gateway holds |
//! | `warren:{presence}:gateways` | set | owners with a heartbeat or entries |
//! | `warren:{presence}:seq` | counter | the number of the last presence change |
//!
//! Every key carries the hash tag `{presence}`, so on a Redis Cluster they
//! all live in one slot and every script below runs on one node: the
//! changes are numbered by one counter, in one order, which is what lets a
//! gateway catch up by number after a gap. Presence is small (an entry per
//! user and room held) and is the price of that order; sessions, the bulk
//! of Redis' memory, spread over the cluster.
//!
//! A user is present in a room while its hash field exists: "first socket"
//! and "last socket" are decided inside one script, so two gateways can
//! never both announce (or both miss) a join or a leave. Every change is
//! numbered from `warren:presence-seq` and published on
//! [`CHANNEL`](super::CHANNEL) by the script that makes it, so the channel
//! carries the changes in the order Redis applied them.
//!
//! All writes for this gateway's own entries go through one task, in the
//! order the sockets asked for them, pipelined in batches; they are
//! idempotent (set semantics), so after any failure the task simply makes
//! Redis match the gateway's sockets again ([`Writer::reconcile`]).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, Presence};
use crate::metrics;
use crate::redis_client::{Connection, SharedConnection};

/// Prefix of a room's presence hash.
pub const ROOM_PREFIX: &str = "warren:{presence}:room:";
/// Prefix of a gateway's heartbeat key (and of its entry set).
pub const GATEWAY_PREFIX: &str = "warren:{presence}:gw:";
/// The set of gateways that may hold entries.
pub const REGISTRY: &str = "warren:{presence}:gateways";
/// The change counter.
pub const SEQ: &str = "warren:{presence}:seq";

/// The most operations sent in one pipeline.
const BATCH: usize = 256;
/// Entries removed per script call when a gateway is reaped (keeps each
/// script short, so Redis is never blocked for long).
const REAP_CHUNK: usize = 500;
/// How long an exiting gateway spends removing its own entries.
const EXIT_CLEANUP: Duration = Duration::from_secs(5);

/// Adds `(room, user)` to this gateway's entries; the first gateway to hold
/// the user in the room announces `join`. Answers the change number and the
/// room's members, or `{-1}` when this gateway's heartbeat is gone (it was
/// reaped, or Redis lost its data): nothing is written then.
const ADD_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, {}} end
if redis.call('SADD', KEYS[2], ARGV[1] .. '|' .. ARGV[2]) == 1
  and redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('PUBLISH', ARGV[3], string.format('%d|join|%s|%s', seq, ARGV[1], ARGV[2]))
end
return {tonumber(redis.call('GET', KEYS[4]) or '0'), redis.call('HKEYS', KEYS[3])}
";

/// The change number and a room's members, read together.
const LOOK_LUA: &str = r"
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HKEYS', KEYS[1])}
";

/// Removes `(room, user)` from this gateway's entries; the last gateway to
/// hold the user in the room announces `leave`. `-1` when the heartbeat is
/// gone (nothing written).
const REMOVE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1] .. '|' .. ARGV[2]) == 1
  and redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1
  and redis.call('HINCRBY', KEYS[3], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[2])
  local seq = redis.call('INCR', KEYS[4])
  redis.call('PUBLISH', ARGV[3], string.format('%d|leave|%s|%s', seq, ARGV[1], ARGV[2]))
end
return 0
";

/// Refreshes a heartbeat and registers its gateway; answers whether the
/// heartbeat was still there (0: first beat, or it expired and the gateway
/// may have been reaped).
const HEARTBEAT_LUA: &str = r"
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return alive
";

/// The registered gateways whose heartbeat is gone.
const EXPIRED_LUA: &str = r"
local dead = {}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. owner) == 0 then table.insert(dead, owner) end
end
return dead
";

/// Removes up to ARGV[2] entries of a gateway whose heartbeat is gone,
/// announcing `leave` for each user no other gateway holds in that room;
/// unregisters the gateway once it has none left. Answers
/// `{entries left, entries removed}`, or `{-1, 0}` when the heartbeat is
/// there (alive again: not reaped). Any number of gateways may run it at
/// once: each entry is popped exactly once.
const REAP_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0} end
local entries = redis.call('SPOP', KEYS[2], ARGV[2])
for _, entry in ipairs(entries) do
  local bar = string.find(entry, '|', 1, true)
  local room, user = string.sub(entry, 1, bar - 1), string.sub(entry, bar + 1)
  local key = ARGV[4] .. room
  if redis.call('HEXISTS', key, user) == 1 and redis.call('HINCRBY', key, user, -1) <= 0 then
    redis.call('HDEL', key, user)
    local seq = redis.call('INCR', KEYS[4])
    redis.call('PUBLISH', ARGV[3], string.format('%d|leave|%s|%s', seq, room, user))
  end
end
local left = redis.call('SCARD', KEYS[2])
if left == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return {left, #entries}
";

/// A room's members and the number of the last change they include.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The change number; `None` when Redis could not be asked.
    pub seq: Option<u64>,
    /// The users present, in no particular order.
    pub members: Vec<String>,
}

/// One change to this gateway's entries, in the order the sockets made it.
#[derive(Debug)]
pub enum Op {
    /// The gateway now holds `user` in `room`; answer the room's members.
    Add { room: String, user: String, reply: Option<oneshot::Sender<Snapshot>> },
    /// Only the room's members (the user was already held here).
    Look { room: String, reply: oneshot::Sender<Snapshot> },
    /// The gateway no longer holds `user` in `room`.
    Remove { room: String, user: String },
}

/// The Redis keys of one gateway process.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The owner: the instance name and a per-process suffix, so that a
    /// gateway restarted under the same name is a new owner.
    pub owner: Arc<str>,
    heartbeat: String,
    entries: String,
}

impl Keys {
    /// The keys of `owner`.
    pub fn new(owner: Arc<str>) -> Self {
        let heartbeat = format!("{GATEWAY_PREFIX}{owner}");
        let entries = format!("{heartbeat}:entries");
        Self { owner, heartbeat, entries }
    }
}

/// The entry of `(room, user)` in a gateway's set.
pub fn entry(room: &str, user: &str) -> String {
    format!("{room}|{user}")
}

fn room_key(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

/// The scripts, each sent to Redis once per connection ([`Link`] loads
/// them) and then run by its hash (`EVALSHA`), also inside pipelines.
static ADD: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_LUA));
static LOOK: LazyLock<Script> = LazyLock::new(|| Script::new(LOOK_LUA));
static REMOVE: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_LUA));
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_LUA));
static EXPIRED: LazyLock<Script> = LazyLock::new(|| Script::new(EXPIRED_LUA));
static REAP: LazyLock<Script> = LazyLock::new(|| Script::new(REAP_LUA));

fn scripts() -> [&'static Script; 6] {
    [&ADD, &LOOK, &REMOVE, &HEARTBEAT, &EXPIRED, &REAP]
}

/// `EVALSHA` of a loaded script. redis-rs retries a lone invocation after
/// `NOSCRIPT` but not one inside a pipeline, hence the load at connect.
fn script(script: &Script, keys: &[&str], args: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args);
    cmd
}

fn add(keys: &Keys, room: &str, user: &str) -> Cmd {
    script(&ADD, &[&keys.heartbeat, &keys.entries, &room_key(room), SEQ], &[room, user, CHANNEL])
}

fn look(room: &str) -> Cmd {
    script(&LOOK, &[&room_key(room), SEQ], &[])
}

fn remove(keys: &Keys, room: &str, user: &str) -> Cmd {
    script(&REMOVE, &[&keys.heartbeat, &keys.entries, &room_key(room), SEQ], &[room, user, CHANNEL])
}

/// The answer of [`ADD`] or [`LOOK`]: `None` when the heartbeat was gone.
fn snapshot(value: Value) -> Option<Snapshot> {
    let (seq, members): (i64, Vec<String>) = redis::from_redis_value(value).ok()?;
    Some(Snapshot { seq: Some(u64::try_from(seq).ok()?), members })
}

// === impl Link ===

/// A task's use of the gateway's shared connection: the scripts loaded on
/// it once per connection (after a restart or a failover the server knows
/// none), and again after any failure.
#[derive(Debug)]
pub struct Link {
    shared: SharedConnection,
    /// The generation of the connection the scripts were loaded on.
    loaded: Option<u64>,
}

impl Link {
    /// A link on `shared`; nothing is loaded yet.
    pub fn new(shared: SharedConnection) -> Self {
        Self { shared, loaded: None }
    }

    async fn connection(&mut self) -> RedisResult<(Connection, u64)> {
        let (mut connection, generation) = self.shared.current().await?;
        if self.loaded != Some(generation) {
            for script in scripts() {
                if let Err(error) = script.load_async(&mut connection).await {
                    self.shared.failed(generation, &error).await;
                    return Err(error);
                }
            }
            self.loaded = Some(generation);
        }
        Ok((connection, generation))
    }

    /// After a failure: the connection is let go if it broke, and the
    /// scripts are loaded again before the next call (a `NOSCRIPT` from a
    /// promoted replica is a failure too).
    async fn failed(&mut self, generation: u64, error: &redis::RedisError) {
        self.loaded = None;
        self.shared.failed(generation, error).await;
    }

    /// Runs one command.
    ///
    /// # Errors
    /// Any Redis or connection error.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        let (mut connection, generation) = self.connection().await?;
        let result = cmd.query_async(&mut connection).await;
        if let Err(error) = &result {
            self.failed(generation, error).await;
        }
        result
    }

    /// Runs a pipeline; one value per command.
    ///
    /// # Errors
    /// Any Redis or connection error.
    pub async fn pipeline(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        let (mut connection, generation) = self.connection().await?;
        let result = pipe.query_async(&mut connection).await;
        if let Err(error) = &result {
            self.failed(generation, error).await;
        }
        result
    }
}

/// Members and change numbers of many rooms, read in one round trip.
///
/// # Errors
/// Any Redis error.
pub async fn look_all(link: &mut Link, rooms: &[String]) -> RedisResult<Vec<Snapshot>> {
    let mut pipe = redis::pipe();
    for room in rooms {
        pipe.add_command(look(room));
    }
    let values = link.pipeline(&pipe).await?;
    Ok(values.into_iter().map(|value| snapshot(value).unwrap_or_default()).collect())
}

// === impl Writer ===

/// The task that owns this gateway's entries and heartbeat.
#[derive(Debug)]
pub struct Writer {
    presence: Arc<Presence>,
    keys: Keys,
    link: Link,
    ttl: Duration,
    /// Redis may not match the sockets: heartbeat and reconcile before the
    /// next batch.
    stale: bool,
}

impl Writer {
    /// A writer for `presence`'s entries, under `keys`.
    pub fn new(presence: Arc<Presence>, keys: Keys, redis: SharedConnection, ttl: Duration) -> Self {
        Self { presence, keys, link: Link::new(redis), ttl, stale: true }
    }

    /// Applies operations and beats every `every` until `token`; then
    /// removes every entry of this gateway (announcing the leaves of users
    /// no other gateway holds) and its heartbeat.
    pub async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>, every: Duration, token: CancellationToken) {
        let mut beats = tokio::time::interval(every);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                _ = beats.tick() => self.beat().await,
                op = ops.recv() => {
                    let Some(op) = op else { break };
                    let mut batch = vec![op];
                    while batch.len() < BATCH {
                        match ops.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    if self.stale {
                        self.beat().await;
                    }
                    self.apply(batch).await;
                }
            }
        }
        match tokio::time::timeout(EXIT_CLEANUP, self.leave_all()).await {
            Ok(Ok(removed)) => tracing::info!(entries = removed, "presence: removed this gateway's entries"),
            Ok(Err(error)) => tracing::warn!(%error, "presence: entries left to expire"),
            Err(_) => tracing::warn!("presence: cleanup timed out; entries left to expire"),
        }
    }

    /// Refreshes the heartbeat; reconciles when the heartbeat had expired or
    /// an earlier write failed.
    async fn beat(&mut self) {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).to_string();
        let cmd = script(&HEARTBEAT, &[&self.keys.heartbeat, REGISTRY], &[&ttl, &self.keys.owner]);
        match self.link.query::<i64>(&cmd).await {
            Ok(alive) => {
                metrics::presence_heartbeat(true);
                if alive == 0 {
                    self.stale = true;
                }
            }
            Err(error) => {
                metrics::presence_heartbeat(false);
                tracing::debug!(%error, "presence heartbeat failed");
                self.stale = true;
                return;
            }
        }
        if self.stale {
            match self.reconcile().await {
                Ok(()) => self.stale = false,
                Err(error) => tracing::warn!(%error, "presence: could not reconcile with Redis; retrying"),
            }
        }
    }

    /// Makes this gateway's entries in Redis match its sockets: adds what is
    /// missing, removes what no socket holds any more.
    async fn reconcile(&mut self) -> RedisResult<()> {
        let cmd = redis::cmd("SMEMBERS").arg(&self.keys.entries).clone();
        let remote: HashSet<String> = self.link.query(&cmd).await?;
        let local = self.presence.held();
        let mut pipe = redis::pipe();
        for (room, user) in &local {
            if !remote.contains(&entry(room, user)) {
                pipe.add_command(add(&self.keys, room, user));
            }
        }
        let local: HashSet<String> = local.iter().map(|(room, user)| entry(room, user)).collect();
        for stale in remote.difference(&local) {
            if let Some((room, user)) = stale.split_once('|') {
                pipe.add_command(remove(&self.keys, room, user));
            }
        }
        let changes = pipe.len();
        let values = self.link.pipeline(&pipe).await?;
        if values.iter().any(|value| matches!(value, Value::Int(-1)) || is_expired_snapshot(value)) {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "heartbeat expired during reconcile")));
        }
        if changes > 0 {
            tracing::info!(changes, "presence: reconciled this gateway's entries with Redis");
        }
        Ok(())
    }

    /// Sends a batch as one pipeline and answers its joins.
    async fn apply(&mut self, batch: Vec<Op>) {
        let mut pipe = redis::pipe();
        for op in &batch {
            pipe.add_command(match op {
                Op::Add { room, user, .. } => add(&self.keys, room, user),
                Op::Look { room, .. } => look(room),
                Op::Remove { room, user } => remove(&self.keys, room, user),
            });
        }
        let values = match self.link.pipeline(&pipe).await {
            Ok(values) => values,
            Err(error) => {
                tracing::debug!(%error, "presence write failed");
                self.stale = true;
                Vec::new()
            }
        };
        let mut values = values.into_iter();
        for op in batch {
            let value = values.next();
            match op {
                Op::Add { reply, .. } => {
                    let answer = value.and_then(snapshot);
                    self.stale |= answer.is_none();
                    if let Some(reply) = reply {
                        let _ = reply.send(answer.unwrap_or_default());
                    }
                }
                Op::Look { reply, .. } => {
                    let _ = reply.send(value.and_then(snapshot).unwrap_or_default());
                }
                Op::Remove { .. } => self.stale |= !matches!(value, Some(Value::Int(0))),
            }
        }
    }

    /// Drops the heartbeat, then removes every entry (as a reaper would).
    async fn leave_all(&mut self) -> RedisResult<u64> {
        let _: i64 = self.link.query(redis::cmd("DEL").arg(&self.keys.heartbeat)).await?;
        reap(&mut self.link, &self.keys).await
    }
}

fn is_expired_snapshot(value: &Value) -> bool {
    matches!(value, Value::Array(items) if matches!(items.first(), Some(Value::Int(-1))))
}

/// Removes the entries of a gateway whose heartbeat is gone, chunk by
/// chunk; returns how many were removed (0 when it is alive after all).
async fn reap(link: &mut Link, keys: &Keys) -> RedisResult<u64> {
    let limit = REAP_CHUNK.to_string();
    let cmd =
        script(&REAP, &[&keys.heartbeat, &keys.entries, REGISTRY, SEQ], &[&keys.owner, &limit, CHANNEL, ROOM_PREFIX]);
    let mut removed = 0;
    loop {
        let (left, now): (i64, u64) = link.query(&cmd).await?;
        removed += now;
        if left <= 0 {
            return Ok(removed);
        }
    }
}

/// Every `every` until `token`, finds gateways whose heartbeat expired and
/// removes their entries. Every gateway sweeps; the scripts make it safe.
pub async fn sweep(redis: SharedConnection, own: Arc<str>, every: Duration, token: CancellationToken) {
    let mut link = Link::new(redis);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = token.cancelled() => return,
        }
        if let Err(error) = sweep_once(&mut link, &own).await {
            tracing::debug!(%error, "presence sweep failed");
        }
    }
}

async fn sweep_once(link: &mut Link, own: &str) -> RedisResult<()> {
    let dead: Vec<String> = link.query(&script(&EXPIRED, &[REGISTRY], &[GATEWAY_PREFIX])).await?;
    // A gateway never reaps itself: its writer reconciles instead.
    for owner in dead.into_iter().filter(|owner| owner != own) {
        let removed = reap(link, &Keys::new(owner.as_str().into())).await?;
        metrics::presence_expired(removed);
        tracing::info!(gateway = owner, entries = removed, "presence: removed the entries of an expired gateway");
    }
    Ok(())
}
