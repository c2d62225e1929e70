//! Presence across real gateways: `joined` lists the members (or only counts
//! them in a big room, and `members` lists them on request), and changes
//! come as `presence_diff` frames, at most one per socket per batch
//! interval, that never repeat what the socket was told. A user's first
//! socket and last socket are announced once to everyone in the room,
//! wherever they are; a crashed gateway's users leave within the stated
//! bound unless they reconnected elsewhere (then nobody sees a flicker), and
//! a drained gateway causes no flicker at all. A crowd joining one room costs
//! each member a few frames, not one per arrival.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use testkit::http::Client;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Socket};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// The gateways' heartbeat period and TTL in this test (3 s and 10 s by default).
const HEARTBEAT: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_secs(2);
/// The presence batch interval where a test sets it (1 s by default).
const BATCH: Duration = Duration::from_millis(200);
/// A crashed gateway's users leave within TTL + one heartbeat, told with
/// the next batch (docs/protocol.md).
const BOUND: Duration = Duration::from_millis(2700);
/// Scheduling slack on a busy test machine.
const SLACK: Duration = Duration::from_millis(1500);
/// How long a socket waits to be sure no more presence comes.
const QUIET: Duration = Duration::from_millis(700);

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect()
}

fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

async fn login(addr: SocketAddr, user: &str) -> anyhow::Result<Client> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    Ok(client)
}

/// Opens a socket on the gateway at `addr` with `client`'s session.
async fn open(client: &Client, addr: SocketAddr) -> anyhow::Result<Socket> {
    let mut socket = ws::connect(addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = socket.next_json().await?;
    ensure!(welcome["type"] == "welcome", "first frame is welcome: {welcome}");
    Ok(socket)
}

fn names(value: &Value) -> anyhow::Result<Vec<String>> {
    let list = value.as_array().with_context(|| format!("not a list: {value}"))?;
    list.iter().map(|name| name.as_str().map(str::to_owned).context("not a name")).collect()
}

fn set(users: &[&String]) -> BTreeSet<String> {
    users.iter().map(|user| (*user).clone()).collect()
}

/// A socket in one room and what it knows of the room's presence: the
/// `joined` list, then every `presence_diff` applied in order.
struct Member {
    socket: Socket,
    room: String,
    members: BTreeSet<String>,
    /// Whether a diff that repeats what the socket knows (a join of a
    /// member, a leave of a non-member) fails the test. Off only where the
    /// protocol allows repeats (after Redis lost its data).
    strict: bool,
}

impl Member {
    /// Joins `room` on `socket`; `joined` must list the members.
    async fn join(mut socket: Socket, room: &str) -> anyhow::Result<Self> {
        socket.send(&json!({"type":"join","room":room})).await?;
        let joined = socket.next_matching(|f| f["type"] == "joined" && f["room"] == room).await?;
        let members: BTreeSet<String> = names(&joined["members"])?.into_iter().collect();
        ensure!(joined["count"] == members.len(), "count is the list's length: {joined}");
        Ok(Self { socket, room: room.to_owned(), members, strict: true })
    }

    /// The next `presence_diff` of the room, applied: (joins, leaves).
    async fn next(&mut self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let room = self.room.clone();
        let frame = self.socket.next_matching(|f| f["type"] == "presence_diff" && f["room"] == room).await?;
        let (joins, leaves) = (names(&frame["joins"])?, names(&frame["leaves"])?);
        ensure!(!joins.is_empty() || !leaves.is_empty(), "an empty diff: {frame}");
        ensure!(joins.is_sorted() && leaves.is_sorted(), "unsorted: {frame}");
        for user in &joins {
            ensure!(self.members.insert(user.clone()) || !self.strict, "told again that {user} joined: {frame}");
        }
        for user in &leaves {
            ensure!(self.members.remove(user) || !self.strict, "told again that {user} left: {frame}");
        }
        Ok((joins, leaves))
    }

    /// Applies diffs until the members are `want`, then any that still
    /// come (changes that cancel out) until none does for a while: the
    /// members must still be `want`.
    async fn settles_on(&mut self, want: &BTreeSet<String>) -> anyhow::Result<()> {
        while &self.members != want {
            self.next().await.with_context(|| format!("members {:?}, waiting for {want:?}", self.members))?;
        }
        while let Ok(next) = tokio::time::timeout(QUIET, self.next()).await {
            next?;
        }
        ensure!(&self.members == want, "members {:?}, not {want:?}", self.members);
        Ok(())
    }

    /// No presence frame for `wait`.
    async fn quiet(&mut self, wait: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(wait, self.next()).await {
            Err(_) => Ok(()),
            Ok(extra) => bail!("unexpected presence: {extra:?}"),
        }
    }
}

fn diff(joins: &[&String], leaves: &[&String]) -> (Vec<String>, Vec<String>) {
    let list = |users: &[&String]| users.iter().map(|user| (*user).clone()).collect();
    (list(joins), list(leaves))
}

#[tokio::test]
async fn presence_survives_a_crash_and_a_drain_without_flicker() -> anyhow::Result<()> {
    let gateway_env = env(&[
        ("GATEWAY_PRESENCE_HEARTBEAT", millis(HEARTBEAT)),
        ("GATEWAY_PRESENCE_TTL", millis(TTL)),
        ("GATEWAY_PRESENCE_BATCH", millis(BATCH)),
    ]);
    let extras = Extras { gateway_env, drain_window: Some(Duration::from_secs(2)), ..Extras::default() };
    let mut stack = Stack::start_with(Shape { bridges: 1, gateways: 3, haproxy: false }, extras).await?;
    let [gw1, gw2, gw3] = [0, 1, 2].map(|i| stack.gateways[i].addr);
    let room = testkit::unique("presence");
    let [olga, kim, rex, dana, lou, tess, zed] =
        ["olga", "kim", "rex", "dana", "lou", "tess", "zed"].map(testkit::unique);

    // olga watches from gw1, the gateway that survives everything.
    let olga_http = login(gw1, &olga).await?;
    let mut olga_ws = Member::join(open(&olga_http, gw1).await?, &room).await?;
    assert_eq!(olga_ws.members, set(&[&olga]), "alone in a new room");

    // kim and rex on gw2 (to be killed), dana and lou on gw3 (to be drained).
    let mut members = Vec::new();
    for (user, addr) in [(&kim, gw2), (&rex, gw2), (&dana, gw3), (&lou, gw3)] {
        let client = login(addr, user).await?;
        let member = Member::join(open(&client, addr).await?, &room).await?;
        assert!(member.members.contains(user) && member.members.contains(&olga), "{user}: {:?}", member.members);
        assert_eq!(olga_ws.next().await?, diff(&[user], &[]), "olga sees {user} arrive");
        members.push((client, member));
    }
    let [(_, mut kim_ws), (rex_http, rex_ws), (dana_http, mut dana_ws), (_, lou_ws)]: [(Client, Member); 4] =
        members.try_into().map_err(|_| anyhow::anyhow!("four users"))?;

    // Two tabs of tess, on gw3 and gw1: one presence.
    let tess_http = login(gw3, &tess).await?;
    let tess_tab1 = Member::join(open(&tess_http, gw3).await?, &room).await?;
    assert_eq!(olga_ws.next().await?, diff(&[&tess], &[]));
    let mut tess_tab2 = Member::join(open(&tess_http, gw1).await?, &room).await?;
    let everyone = set(&[&olga, &kim, &rex, &dana, &lou, &tess]);
    assert_eq!(tess_tab2.members, everyone, "the second tab sees each member once");
    olga_ws.quiet(QUIET).await?;

    // Changes made on gw2 itself and on gw3 reach kim on gw2, each once.
    kim_ws.settles_on(&everyone).await?;

    // SIGKILL gw2. rex reconnects on gw1 at once; kim does not come back.
    let killed_at = Instant::now();
    stack.gateways[1].process.signal("KILL").await?;
    drop((kim_ws, rex_ws));
    let mut rex_again = Member::join(open(&rex_http, gw1).await?, &room).await?;
    assert!(rex_again.members.contains(&kim), "kim is still there until gw2's heartbeat expires");
    let left = olga_ws.next().await?;
    let took = killed_at.elapsed();
    println!("kim left {took:?} after gw2 was killed");
    assert_eq!(left, diff(&[], &[&kim]), "only kim leaves: rex reconnected in time");
    assert!(took <= BOUND + SLACK, "kim left {took:?} after the crash (bound {BOUND:?})");

    // SIGTERM gw3. dana obeys the notice and reconnects on gw1; lou and
    // tess's first tab ignore it and are closed by the gateway.
    stack.gateways[2].process.signal("TERM").await?;
    dana_ws.socket.next_matching(|f| f["type"] == "reconnect").await?;
    drop(dana_ws);
    let mut dana_again = Member::join(open(&dana_http, gw1).await?, &room).await?;
    let code = stack.gateways[2].process.wait(Duration::from_secs(15)).await?;
    assert_eq!(code, Some(0), "gw3 drained and exited");
    drop((lou_ws, tess_tab1));
    assert_eq!(olga_ws.next().await?, diff(&[], &[&lou]), "lou left when gw3 exited");

    // Well past the bound, nothing else happened.
    olga_ws.quiet(BOUND + SLACK).await?;
    let zed_http = login(gw1, &zed).await?;
    let zed_ws = Member::join(open(&zed_http, gw1).await?, &room).await?;
    let now = set(&[&olga, &rex, &dana, &tess]);
    let mut with_zed = now.clone();
    with_zed.insert(zed.clone());
    assert_eq!(zed_ws.members, with_zed, "who is left");
    assert_eq!(olga_ws.next().await?, diff(&[&zed], &[]));
    drop(zed_ws);
    assert_eq!(olga_ws.next().await?, diff(&[], &[&zed]));

    // What each user on gw1 was told, from its join on, adds up to who is
    // there, with no change told twice.
    for member in [&mut olga_ws, &mut tess_tab2, &mut rex_again, &mut dana_again] {
        member.settles_on(&now).await?;
    }

    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await?.text();
    assert!(metrics.contains(r#"warren_gateway_presence_heartbeats_total{result="ok"}"#), "{metrics}");
    assert!(metrics.contains("warren_gateway_presence_entries 4"), "olga, rex, dana, tess:\n{metrics}");
    assert!(metrics.contains(r#"warren_gateway_frames_out_total{type="presence_diff"}"#), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_closed_socket_leaves_at_once_and_a_leave_frame_too() -> anyhow::Result<()> {
    // The default batch interval (1 s).
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let [gw1, gw2] = [0, 1].map(|i| stack.gateways[i].addr);
    let room = testkit::unique("presence");
    let [ann, ben] = ["ann", "ben"].map(testkit::unique);
    let mut ann_ws = Member::join(open(&login(gw1, &ann).await?, gw1).await?, &room).await?;
    let ben_http = login(gw2, &ben).await?;
    let mut ben_ws = Member::join(open(&ben_http, gw2).await?, &room).await?;
    assert_eq!(ben_ws.members, set(&[&ann, &ben]));
    assert_eq!(ann_ws.next().await?, diff(&[&ben], &[]));

    ben_ws.socket.send(&json!({"type":"leave","room":room})).await?;
    ben_ws.socket.next_of_type("left").await?;
    assert_eq!(ann_ws.next().await?, diff(&[], &[&ben]));
    let ben_ws = Member::join(ben_ws.socket, &room).await?;
    assert_eq!(ben_ws.members, set(&[&ann, &ben]));
    assert_eq!(ann_ws.next().await?, diff(&[&ben], &[]));
    drop(ben_ws);
    assert_eq!(ann_ws.next().await?, diff(&[], &[&ben]), "a closed socket leaves");
    ann_ws.quiet(QUIET).await?;

    // A page reload within one batch: its leave and join cancel out.
    // A page reload: its leave and join cancel out when they fall in one
    // batch (nearly always: they are milliseconds apart), else come in turn.
    let ben_ws = Member::join(open(&ben_http, gw2).await?, &room).await?;
    assert_eq!(ann_ws.next().await?, diff(&[&ben], &[]));
    drop(ben_ws);
    let _ben_again = Member::join(open(&ben_http, gw2).await?, &room).await?;
    let mut frames = 0;
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(2500), ann_ws.next()).await {
        next?;
        frames += 1;
    }
    println!("a reload cost ann {frames} presence frames");
    assert_eq!(ann_ws.members, set(&[&ann, &ben]), "ben is back");
    assert!(frames == 0 || frames == 2, "{frames} frames");
    Ok(())
}

#[tokio::test]
async fn presence_recovers_after_redis_restarts() -> anyhow::Result<()> {
    let mut redis = testkit::services::RedisServer::start().await?;
    let gateway_env = env(&[
        ("GATEWAY_PRESENCE_HEARTBEAT", millis(HEARTBEAT)),
        ("GATEWAY_PRESENCE_TTL", millis(TTL)),
        ("GATEWAY_PRESENCE_BATCH", millis(BATCH)),
    ]);
    let extras = Extras { redis_url: Some(redis.url()), gateway_env, ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: false }, extras).await?;
    let [gw1, gw2] = [0, 1].map(|i| stack.gateways[i].addr);
    let room = testkit::unique("presence");
    let [ann, ben, cat] = ["ann", "ben", "cat"].map(testkit::unique);
    let mut ann_ws = Member::join(open(&login(gw1, &ann).await?, gw1).await?, &room).await?;
    // Redis loses its data: what changed meanwhile may be told again.
    ann_ws.strict = false;
    let ben_ws = Member::join(open(&login(gw2, &ben).await?, gw2).await?, &room).await?;
    assert_eq!(ann_ws.next().await?, diff(&[&ben], &[]));
    let cat_http = login(gw2, &cat).await?;

    // ben leaves while Redis is down: gw2 cannot write it then.
    redis.stop().await?;
    drop(ben_ws);
    tokio::time::sleep(HEARTBEAT * 2).await;
    redis.start_again().await?;
    ann_ws.settles_on(&set(&[&ann])).await.context("told once Redis is back")?;

    // And presence works as before.
    let cat_ws = Member::join(open(&cat_http, gw2).await?, &room).await?;
    assert_eq!(cat_ws.members, set(&[&ann, &cat]));
    assert_eq!(ann_ws.next().await?, diff(&[&cat], &[]));
    ann_ws.quiet(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn a_big_room_counts_its_members_in_joined_and_lists_them_on_request() -> anyhow::Result<()> {
    let gateway_env = env(&[("GATEWAY_JOINED_MEMBERS_MAX", "2".to_owned())]);
    let stack = Stack::start_with(
        Shape { bridges: 1, gateways: 1, haproxy: false },
        Extras { gateway_env, ..Extras::default() },
    )
    .await?;
    let gw = stack.gateways[0].addr;
    let room = testkit::unique("presence");
    let [ann, ben, cat] = ["ann", "ben", "cat"].map(testkit::unique);
    let mut sockets = Vec::new();
    for user in [&ann, &ben] {
        let member = Member::join(open(&login(gw, user).await?, gw).await?, &room).await?;
        sockets.push(member);
    }
    assert_eq!(sockets[1].members, set(&[&ann, &ben]), "at the cap: listed");

    let mut cat_ws = open(&login(gw, &cat).await?, gw).await?;
    cat_ws.send(&json!({"type":"members","room":room})).await?;
    let refused = cat_ws.next_of_type("error").await?;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    cat_ws.send(&json!({"type":"join","room":room})).await?;
    let joined = cat_ws.next_of_type("joined").await?;
    assert_eq!(joined, json!({"type":"joined","room":room,"count":3,"truncated":true}), "over the cap: counted");
    cat_ws.send(&json!({"type":"members","room":room})).await?;
    let answer = cat_ws.next_of_type("members").await?;
    let all: Vec<String> = set(&[&ann, &ben, &cat]).into_iter().collect();
    assert_eq!(answer, json!({"type":"members","room":room,"members":all}));

    // Asking again and again is rate-limited, per user.
    for _ in 0..8 {
        cat_ws.send(&json!({"type":"members","room":room})).await?;
    }
    let refused = cat_ws.next_matching(|f| f["type"] == "error" && f["code"] == "rate_limited").await?;
    assert!(refused["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{refused}");
    Ok(())
}

/// How many sockets join the crowd's room.
const CROWD: usize = 300;
/// Between two joins of the crowd: it arrives over about 3 s, so each
/// member sees several batches.
const STAGGER: Duration = Duration::from_millis(10);
/// The default batch interval, which the crowd test runs with.
const DEFAULT_BATCH: Duration = Duration::from_secs(1);

/// What one member of the crowd was told, and its socket, kept open until
/// every member is done.
#[derive(Debug)]
struct Told {
    _socket: Socket,
    /// When its `joined` came.
    joined_at: Instant,
    /// Whether `joined` only counted the members.
    truncated: bool,
    /// `presence_diff` frames received.
    diffs: usize,
}

/// One member of the crowd: joins `delay` after `start`, asks for the list if
/// `joined` has none, and applies diffs until it knows `everyone`; then
/// nothing more may come.
async fn crowd_member(
    mut socket: Socket,
    user: String,
    room: String,
    everyone: Arc<BTreeSet<String>>,
    (start, delay): (Arc<Barrier>, Duration),
) -> anyhow::Result<Told> {
    start.wait().await;
    tokio::time::sleep(delay).await;
    socket.send(&json!({"type":"join","room":room})).await?;
    // `None` until a list comes: diffs before a `members` answer are in it.
    let mut members: Option<BTreeSet<String>> = None;
    let (mut joined_at, mut truncated, mut diffs) = (None, false, 0);
    while members.as_ref() != Some(&everyone) {
        let frame = socket.next_json().await.with_context(|| format!("{user} knows {members:?}"))?;
        if frame["room"] != room.as_str() {
            continue;
        }
        match frame["type"].as_str() {
            Some("joined") => {
                joined_at = Some(Instant::now());
                ensure!(frame["count"].as_u64().is_some_and(|count| count > 0), "{frame}");
                truncated = frame["truncated"] == true;
                if truncated {
                    ensure!(frame.get("members").is_none(), "a truncated joined lists nobody: {frame}");
                    socket.send(&json!({"type":"members","room":room})).await?;
                } else {
                    members = Some(names(&frame["members"])?.into_iter().collect());
                }
            }
            Some("members") => members = Some(names(&frame["members"])?.into_iter().collect()),
            Some("presence_diff") => {
                diffs += 1;
                let (joins, leaves) = (names(&frame["joins"])?, names(&frame["leaves"])?);
                ensure!(leaves.is_empty() && !joins.contains(&user), "{user} was told {frame}");
                if let Some(members) = members.as_mut() {
                    for join in joins {
                        ensure!(members.insert(join), "{user} was told a join twice: {frame}");
                    }
                }
            }
            _ => {}
        }
    }
    // Everyone is there: nothing more may come.
    match tokio::time::timeout(DEFAULT_BATCH * 2, socket.next_matching(|f| f["type"] == "presence_diff")).await {
        Err(_) => {}
        Ok(extra) => bail!("{user} was told more: {extra:?}"),
    }
    Ok(Told { _socket: socket, joined_at: joined_at.context("joined")?, truncated, diffs })
}

#[tokio::test]
async fn a_crowd_joining_one_room_costs_each_member_a_few_frames() -> anyhow::Result<()> {
    // Every socket comes from 127.0.0.1: lift the per-address handshake rate.
    let gateway_env = env(&[("GATEWAY_HANDSHAKE_RATE", "10000".to_owned())]);
    let stack = Stack::start_with(
        Shape { bridges: 1, gateways: 2, haproxy: false },
        Extras { gateway_env, ..Extras::default() },
    )
    .await?;
    let gateways = [stack.gateways[0].addr, stack.gateways[1].addr];
    let room = testkit::unique("crowd");
    let prefix = testkit::unique("c");
    let users: Vec<String> = (0..CROWD).map(|i| format!("{prefix}-{i:03}")).collect();
    let everyone = Arc::new(users.iter().cloned().collect::<BTreeSet<_>>());

    // Log in and open every socket first, half on each gateway.
    let mut opening = JoinSet::new();
    for (index, user) in users.iter().enumerate() {
        let (addr, user) = (gateways[index % 2], user.clone());
        opening.spawn(async move {
            let client = login(addr, &user).await?;
            anyhow::Ok((user, open(&client, addr).await?))
        });
    }
    let mut sockets = Vec::new();
    while let Some(opened) = opening.join_next().await {
        sockets.push(opened??);
    }

    // Then they all join within a short time.
    let start = Arc::new(Barrier::new(CROWD + 1));
    let mut crowd = JoinSet::new();
    for (index, (user, socket)) in sockets.into_iter().enumerate() {
        let when = (start.clone(), STAGGER * u32::try_from(index)?);
        crowd.spawn(crowd_member(socket, user, room.clone(), everyone.clone(), when));
    }
    start.wait().await;
    let started = Instant::now();
    let mut told = Vec::new();
    while let Some(member) = crowd.join_next().await {
        told.push(member??);
    }

    let joining = told.iter().map(|t| t.joined_at.duration_since(started)).max().unwrap_or_default();
    let bound = (joining.as_secs_f64() / DEFAULT_BATCH.as_secs_f64()).ceil() as usize + 2;
    let most = told.iter().map(|t| t.diffs).max().unwrap_or_default();
    let total: usize = told.iter().map(|t| t.diffs).sum();
    let truncated = told.iter().filter(|t| t.truncated).count();
    println!(
        "{CROWD} joined in {joining:?}: at most {most} presence frames per member (bound {bound}), {total} in all \
         (one per change per member would be {}); {truncated} joined frames without the list",
        CROWD * (CROWD - 1) / 2
    );
    assert!(most <= bound, "a member got {most} presence frames; bound {bound}");
    assert!(most * 10 < CROWD, "far fewer frames than joiners");
    assert!(truncated > 0, "the room outgrew the joined cap (100)");
    Ok(())
}
