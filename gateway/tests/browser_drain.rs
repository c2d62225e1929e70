//! The page survives its gateway's drain, in headless Chromium: SIGTERM the
//! gateway the page is on while another client keeps sending, and the page
//! moves to another gateway without the login page, shows what was sent in
//! the gap exactly once, and a message typed in the gap is delivered once.
//!
//! The browser side is `gateway/tests/js/drain.mjs`; this test owns the
//! stack and the sending client, and the two exchange JSON lines (the
//! exchange is described at the top of the script). The sender logs in
//! directly on another gateway, not through HAProxy, so it is never on the
//! one that drains.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testkit::http::Client;
use testkit::stack::{Shape, Stack, repo_root};
use testkit::ws;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// The whole test, stack included.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest wait for one line of the script (it gives up after 60 s).
const LINE_TIMEOUT: Duration = Duration::from_secs(65);
/// Messages the sender sends while the page is between sockets.
const GAP_MESSAGES: usize = 5;

fn js_dir() -> PathBuf {
    repo_root().join("gateway/tests/js")
}

/// `node drain.mjs`, with its stdout read line by line and kept for messages.
struct Script {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
    transcript: Vec<String>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script").field("transcript", &self.transcript).finish_non_exhaustive()
    }
}

impl Script {
    fn spawn(url: &str, room: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            js_dir().join("node_modules").is_dir(),
            "Node packages missing: run `npm ci` in gateway/tests/js (scripts/test does)"
        );
        let mut child = Command::new("node")
            .args(["drain.mjs", "--url", url, "--room", room])
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("run node")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut stderr = child.stderr.take().context("stderr")?;
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(Self { child, stdin, stdout, stderr: Some(stderr), transcript: Vec::new() })
    }

    /// The next stdout line, or `None` at its end.
    async fn line(&mut self) -> anyhow::Result<Option<String>> {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.stdout.next_line()).await;
        let line = match line {
            Ok(line) => line?,
            Err(_) => bail!("drain.mjs said nothing for {LINE_TIMEOUT:?}{}", self.context().await),
        };
        if let Some(line) = &line {
            println!("drain.mjs: {line}");
            self.transcript.push(line.clone());
        }
        Ok(line)
    }

    /// Reads lines until a JSON object with `key`; fails when the script
    /// fails or ends first.
    async fn expect(&mut self, key: &str) -> anyhow::Result<Value> {
        loop {
            let Some(line) = self.line().await? else {
                bail!("drain.mjs ended while the test waited for {key:?}{}", self.context().await);
            };
            if line.starts_with("drain e2e: FAILED") {
                bail!("{line}{}", self.context().await);
            }
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value.get(key).is_some()
            {
                return Ok(value);
            }
        }
    }

    /// Writes one JSON line to the script.
    async fn tell(&mut self, value: &Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{value}\n").as_bytes()).await.context("write to drain.mjs")?;
        self.stdin.flush().await.context("write to drain.mjs")
    }

    /// Reads to the end and checks the script passed.
    async fn finish(mut self) -> anyhow::Result<()> {
        let mut ok = false;
        while let Some(line) = self.line().await? {
            ok |= line == "drain e2e: ok";
        }
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.context("node exit")??;
        if !ok || !status.success() {
            bail!("drain.mjs did not pass ({status}){}", self.context().await);
        }
        Ok(())
    }

    /// What the script said, for a failure message (kills it first, so that
    /// its stderr ends).
    async fn context(&mut self) -> String {
        let _ = self.child.start_kill();
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(5), task).await.ok().and_then(Result::ok),
            None => None,
        };
        format!("\n--- stdout:\n{}\n--- stderr:\n{}", self.transcript.join("\n"), stderr.unwrap_or_default())
    }
}

#[tokio::test]
async fn the_page_moves_to_another_gateway_when_its_own_drains() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, drain_under_the_page()).await.context("the test took over 90 s")?
}

async fn drain_under_the_page() -> anyhow::Result<()> {
    let mut stack = Stack::start(Shape { bridges: 1, gateways: 3, haproxy: true }).await?;
    let room = testkit::unique("drain");
    let mut script = Script::spawn(&format!("http://{}", stack.front()), &room)?;

    // The page is logged in, in the room, on some gateway.
    let ready = script.expect("ready").await?;
    let first = ready["instance"].as_str().context("ready without instance")?.to_owned();
    let page_user = ready["user"].as_str().context("ready without user")?.to_owned();
    let dying =
        stack.gateways.iter().position(|g| g.instance == first).with_context(|| format!("no gateway {first}"))?;

    // The sender, directly on another gateway.
    let sender_on = &stack.gateways[(dying + 1) % stack.gateways.len()];
    let mut login = Client::new(sender_on.addr);
    login.login(&testkit::unique("sender")).await?;
    let mut sender = ws::connect(sender_on.addr, login.cookie.as_deref(), None)
        .await
        .map_err(|refused| anyhow::anyhow!("sender socket refused: {refused:?}"))?;
    assert_eq!(sender.next_json().await?["type"], "welcome");
    sender.join(&room, None).await?;
    let before = format!("before the drain {}", testkit::unique("m"));
    sender.send_message(&room, &before, "before").await?;
    script.tell(&json!({ "before": before })).await?;
    script.expect("seen_before").await?;

    // SIGTERM the page's gateway; once the page has let go of it, send.
    let terminated = Instant::now();
    stack.gateways[dying].process.signal("TERM").await?;
    let left = script.expect("left").await?;
    let typed = left["typed"].as_str().context("left without typed")?.to_owned();
    let mut sent = Vec::new();
    for n in 0..GAP_MESSAGES {
        let text = format!("sent in the gap {n} {}", testkit::unique("m"));
        sender.send_message(&room, &text, &format!("gap-{n}")).await?;
        sent.push(text);
    }
    script.tell(&json!({ "sent": sent })).await?;

    // Back on another gateway, the typed message acked; then a fence after
    // everything, so that both sides can count.
    let back = script.expect("reconnected").await?;
    assert_ne!(back["reconnected"], first.as_str(), "the page came back to the gateway that drains");
    let fence = format!("fence {}", testkit::unique("m"));
    let fence_id = sender.send_message(&room, &fence, "fence").await?;
    script.tell(&json!({ "fence": fence })).await?;
    script.finish().await?;

    // Delivered once: the room as the sender saw it, live, up to the fence.
    let seen = sender.messages_until(&room, fence_id).await?;
    let ids: Vec<u64> = seen.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
    let count = |text: &str| seen.iter().filter(|m| m["text"] == text).count();
    let typed_copies: Vec<&Value> = seen.iter().filter(|m| m["text"] == typed.as_str()).collect();
    assert_eq!(typed_copies.len(), 1, "the message typed in the gap, in the room: {typed_copies:?}");
    assert_eq!(typed_copies[0]["user"], page_user.as_str(), "typed by the page's user");
    for text in std::iter::once(&before).chain(&sent) {
        assert_eq!(count(text), 1, "{text:?} in the room");
    }

    // And the drained gateway exits by itself, cleanly (its window is 2 s in
    // the test stack, its grace 3 s).
    let code = stack.gateways[dying].process.wait(Duration::from_secs(15)).await.context("drained gateway exits")?;
    assert_eq!(code, Some(0), "drained gateway's exit status");
    println!("SIGTERM to the end of the test: {:?}", terminated.elapsed());
    Ok(())
}
