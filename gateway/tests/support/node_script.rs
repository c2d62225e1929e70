//! A Node script in `gateway/tests/js` that a test talks to in JSON lines:
//! the test writes one JSON object a line to its stdin and reads its stdout
//! line by line, keeping what it said for failure messages. The script ends
//! with `NAME e2e: ok` or `NAME e2e: FAILED: why`, NAME being its file name
//! without `.mjs` (`gateway/tests/js/harness.mjs` does that part); any other
//! line is a log line.
//!
//! Not a module of `support`: the tests that drive a browser include it with
//! `#[path]`, so that the test binaries without Node neither build it nor
//! warn about it unused.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use testkit::stack::repo_root;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// The longest wait for one line of a script (the scripts give up after
/// 60 s).
const LINE_TIMEOUT: Duration = Duration::from_secs(65);
/// How long a script whose stdout ended may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long its stderr may take to end once it is killed.
const STDERR_TIMEOUT: Duration = Duration::from_secs(5);

/// `node SCRIPT ARGS…`, its stdout read line by line and kept for messages.
pub struct NodeScript {
    /// The file name (`api.mjs`), which names the script in messages.
    script: String,
    /// `NAME e2e`, which starts the script's verdict.
    name: String,
    /// Killed on drop, and before a failure message so that stderr ends.
    child: Child,
    /// Where [`NodeScript::send`] writes.
    stdin: ChildStdin,
    /// Read a line at a time, each within [`LINE_TIMEOUT`].
    stdout: Lines<BufReader<ChildStdout>>,
    /// Reads stderr apart, so that a full pipe never stalls the script; taken
    /// by the first failure message.
    stderr: Option<JoinHandle<String>>,
    /// Every stdout line so far.
    transcript: Vec<String>,
}

impl std::fmt::Debug for NodeScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeScript")
            .field("script", &self.script)
            .field("transcript", &self.transcript)
            .finish_non_exhaustive()
    }
}

impl NodeScript {
    /// Runs `node script args…` in `gateway/tests/js`; the script is killed
    /// when this is dropped.
    ///
    /// # Errors
    ///
    /// When Node's packages are not installed there, or `node` does not start.
    pub fn spawn(script: &str, args: &[&str]) -> anyhow::Result<Self> {
        let dir = repo_root().join("gateway/tests/js");
        anyhow::ensure!(
            dir.join("node_modules").is_dir(),
            "Node packages missing: run `npm ci` in gateway/tests/js (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(dir)
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
        let name = format!("{} e2e", script.trim_end_matches(".mjs"));
        Ok(Self { script: script.to_owned(), name, child, stdin, stdout, stderr: Some(stderr), transcript: Vec::new() })
    }

    /// Reads lines until a JSON object with `key`, and returns it.
    ///
    /// # Errors
    ///
    /// When the script fails, ends, or says nothing for 65 s first.
    pub async fn expect(&mut self, key: &str) -> anyhow::Result<Value> {
        loop {
            let Some(line) = self.line().await? else {
                let status = self.exit().await?;
                let message = format!("{} ended ({status}) while the test waited for {key:?}", self.script);
                return Err(self.failure(message).await);
            };
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value.get(key).is_some()
            {
                return Ok(value);
            }
        }
    }

    /// Writes `value` to the script, one line.
    ///
    /// # Errors
    ///
    /// When the script no longer reads.
    pub async fn send(&mut self, value: &Value) -> anyhow::Result<()> {
        let what = || format!("write to {}", self.script);
        self.stdin.write_all(format!("{value}\n").as_bytes()).await.with_context(what)?;
        self.stdin.flush().await.with_context(what)
    }

    /// Reads to the end and checks the script passed: it said `NAME e2e: ok`
    /// and exited with 0.
    ///
    /// # Errors
    ///
    /// When it failed, said nothing for 65 s, or did not exit 10 s after its
    /// stdout ended.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let passed = format!("{}: ok", self.name);
        let mut ok = false;
        while let Some(line) = self.line().await? {
            ok |= line == passed;
        }
        let status = self.exit().await?;
        if !ok || !status.success() {
            let message = format!("{} did not pass ({status})", self.script);
            return Err(self.failure(message).await);
        }
        Ok(())
    }

    /// The next stdout line, or `None` at its end.
    ///
    /// # Errors
    ///
    /// When the line is the script's `FAILED`, or nothing comes for 65 s.
    async fn line(&mut self) -> anyhow::Result<Option<String>> {
        let line = match tokio::time::timeout(LINE_TIMEOUT, self.stdout.next_line()).await {
            Ok(line) => line?,
            Err(_) => {
                let message = format!("{} said nothing for {LINE_TIMEOUT:?}", self.script);
                return Err(self.failure(message).await);
            }
        };
        if let Some(line) = &line {
            println!("{}: {line}", self.script);
            self.transcript.push(line.clone());
            if line.starts_with(&format!("{}: FAILED", self.name)) {
                return Err(self.failure(line.clone()).await);
            }
        }
        Ok(line)
    }

    /// Waits for the script to exit, once its stdout has ended.
    async fn exit(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await.context("node exit")??)
    }

    /// `message` followed by what the script said (kills it first, so that
    /// its stderr ends).
    async fn failure(&mut self, message: String) -> anyhow::Error {
        let _ = self.child.start_kill();
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(STDERR_TIMEOUT, task).await.ok().and_then(Result::ok),
            None => None,
        };
        let stdout = self.transcript.join("\n");
        anyhow::anyhow!("{message}\n--- stdout:\n{stdout}\n--- stderr:\n{}", stderr.unwrap_or_default())
    }
}
