//! Tests that need Node: session compatibility with the real npm packages
//! `express-session` + `connect-redis`, and the page driven in headless
//! Chromium. `scripts/test` installs Node's packages (`npm ci` in
//! `gateway/tests/js`) and Chromium before running these.

use std::path::PathBuf;

use anyhow::Context;
use http::StatusCode;
use testkit::http::Client;
use testkit::stack::{Extras, Shape, Stack, TEST_SECRET, redis_url, repo_root};
use tokio::process::Command;

fn js_dir() -> PathBuf {
    repo_root().join("gateway/tests/js")
}

/// Runs a script in `gateway/tests/js` and returns its stdout; fails with its
/// stderr when it fails.
async fn node(args: &[&str]) -> anyhow::Result<String> {
    anyhow::ensure!(
        js_dir().join("node_modules").is_dir(),
        "Node packages missing: run `npm ci` in gateway/tests/js (scripts/test does)"
    );
    let output = Command::new("node").args(args).current_dir(js_dir()).output().await.context("run node")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "node {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

async fn express(mode: &str, flag: &str, value: &str) -> anyhow::Result<serde_json::Value> {
    let redis = redis_url();
    let out = node(&["express-compat.mjs", mode, "--redis", &redis, "--secret", TEST_SECRET, flag, value]).await?;
    serde_json::from_str(out.trim()).with_context(|| format!("express-compat printed {out:?}"))
}

#[tokio::test]
async fn sessions_are_shared_with_express_session() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let gateway = stack.gateways[0].addr;

    // Node logs in; the gateway accepts the session.
    let node_user = testkit::unique("node");
    let made = express("make", "--user", &node_user).await?;
    let mut from_node = Client::new(gateway);
    from_node.cookie = Some(made["cookie"].as_str().context("cookie")?.to_owned());
    let session = from_node.get("/session").await?;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    assert_eq!(session.json()?["user"], node_user.as_str());

    // The gateway logs in; express-session reads the session.
    let rust_user = testkit::unique("rust");
    let mut from_rust = Client::new(gateway);
    from_rust.login(&rust_user).await?;
    let cookie = from_rust.cookie.clone().context("cookie")?;
    let read = express("read", "--cookie", &cookie).await?;
    assert_eq!(read["user"], rust_user.as_str());

    // And a cookie signed with another secret is refused by both.
    let forged = format!("{}AAAA", &cookie[..cookie.len() - 4]);
    assert_eq!(express("read", "--cookie", &forged).await?["user"], serde_json::Value::Null);
    Ok(())
}

#[tokio::test]
async fn the_page_chats_across_gateways_in_headless_chromium() -> anyhow::Result<()> {
    // `joined` lists one member at most: the page of the second user in the
    // room only gets the count, and must ask for the list.
    let gateway_env = vec![("GATEWAY_JOINED_MEMBERS_MAX".to_owned(), "1".to_owned())];
    let extras = Extras { gateway_env, ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 3, haproxy: true }, extras).await?;
    let url = format!("http://{}", stack.front());
    let screenshot = std::env::temp_dir().join(testkit::unique("warren-page")).with_extension("png");
    let screenshot = screenshot.to_string_lossy().into_owned();
    let out = node(&["browser.mjs", "--url", &url, "--screenshot", &screenshot]).await?;
    assert!(out.contains("browser e2e: ok"), "{out}");
    let _ = std::fs::remove_file(&screenshot);
    Ok(())
}
