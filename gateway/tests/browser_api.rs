//! The server API as the page sees it, in headless Chromium: a backend posts
//! into the room the page is in and the page shows the message; then the
//! backend disconnects the user with `end_sessions`, and the page, closed
//! with 1008, does not get back in on its session: it ends on the login page
//! and stays there, and its cookie is refused (`GET /session` and `/ws` 401).
//!
//! The browser side is `gateway/tests/js/api.mjs`; this test owns the stack
//! and calls the API, and the two exchange JSON lines (the exchange is
//! described at the top of the script). The page is behind HAProxy; the API
//! is called on another gateway than the page's, so the disconnect crosses
//! gateways.

#[path = "support/node_script.rs"]
mod node_script;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use node_script::NodeScript;
use serde_json::{Value, json};
use testkit::http::{Client, Reply};
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Refused};

/// The gateways' API token.
const TOKEN: &str = "browser-api-test-token-0123456789abcdef";
/// The whole test, stack included.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The reasons of the 1008 close a disconnect with `end_sessions` brings:
/// ending the sessions publishes their logout first, so the sockets usually
/// close as after a logout ("session ended"), before the disconnect notice.
const CLOSE_REASONS: [&str; 2] = ["session ended", "disconnected by the server"];
/// How long the presence API may take to show a join or a leave.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// One API call with the bearer token.
async fn api(addr: SocketAddr, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Reply> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let reply = testkit::http::send(addr, request.body(Full::new(Bytes::from(body)))?).await?;
    anyhow::ensure!(reply.status == StatusCode::OK, "{path} answered {}: {}", reply.status, reply.text());
    Ok(reply)
}

/// Polls the presence API until the room's members satisfy `wanted`.
async fn wait_members(addr: SocketAddr, room: &str, wanted: impl Fn(&[String]) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PRESENCE_TIMEOUT;
    loop {
        let reply = api(addr, Method::GET, &format!("/api/v1/rooms/{room}/presence"), None).await?.json()?;
        let members: Vec<String> = serde_json::from_value(reply["members"].clone())?;
        if wanted(&members) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{room}: members {members:?} after {PRESENCE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_page_shows_posts_and_goes_to_the_login_page_when_its_user_is_disconnected() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, post_then_disconnect()).await.context("the test took over 90 s")?
}

async fn post_then_disconnect() -> anyhow::Result<()> {
    let extras = Extras { gateway_env: vec![("GATEWAY_API_TOKEN".to_owned(), TOKEN.to_owned())], ..Extras::default() };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: true }, extras).await?;
    let room = testkit::unique("api-page");
    let url = format!("http://{}", stack.front());
    let mut script = NodeScript::spawn("api.mjs", &["--url", &url, "--room", &room])?;

    // The page is logged in, in the room, on some gateway; the backend calls
    // the other one.
    let ready = script.expect("ready").await?;
    let user = ready["user"].as_str().context("ready without user")?.to_owned();
    let instance = ready["instance"].as_str().context("ready without instance")?;
    let backend = stack.gateways.iter().find(|g| g.instance != instance).context("no other gateway")?.addr;
    wait_members(backend, &room, |members| members == [user.as_str()]).await?;

    // A post through the API is on the page, as the message it is.
    let text = format!("from the backend {}", testkit::unique("m"));
    let post = json!({"user": "billing-bot", "text": text, "idempotency_key": testkit::unique("post")});
    let id = api(backend, Method::POST, &format!("/api/v1/rooms/{room}/messages"), Some(&post)).await?.json()?["id"]
        .as_u64()
        .context("a post answers an id")?;
    script.send(&json!({"posted": text, "id": id, "by": "billing-bot"})).await?;
    let shown = script.expect("shown").await?;
    let cookie = shown["cookie"].as_str().context("the page has no session cookie")?.to_owned();
    // The cookie is live: a socket of our own on it, on the backend's gateway
    // (no `GET /session`: that would replace the page's session id).
    let mut probe =
        ws::connect(backend, Some(&cookie), None).await.map_err(|e| anyhow::anyhow!("the page's cookie: {e:?}"))?;
    assert_eq!(probe.next_json().await?["user"], user.as_str(), "welcome on the page's cookie");

    // The backend disconnects the user and ends their sessions.
    let ended =
        api(backend, Method::POST, &format!("/api/v1/users/{user}/disconnect"), Some(&json!({"end_sessions": true})))
            .await?
            .json()?;
    assert_eq!(ended["user"], user.as_str());
    assert_eq!(ended["sessions_ended"], 1, "the page's one login: {ended}");
    script.send(&json!({"disconnected": true})).await?;
    loop {
        if let ws::Event::Close(code, reason) = probe.next_event().await? {
            assert_eq!(code, 1008, "the probe's close");
            assert!(CLOSE_REASONS.contains(&reason.as_str()), "the probe's close reason: {reason:?}");
            break;
        }
    }

    // The page: its socket closed with 1008, one session check refused, no
    // socket since, and the login page on screen.
    let out = script.expect("logged_out").await?["logged_out"].clone();
    assert_eq!(out["close"]["code"], 1008, "the page's socket close: {out}");
    assert!(out["close"]["reason"].as_str().is_some_and(|r| CLOSE_REASONS.contains(&r)), "{out}");
    assert!(
        out["sessions"].as_array().is_some_and(|s| !s.is_empty() && s.iter().all(|status| status == 401)),
        "the page's GET /session after the close: {out}"
    );
    assert_eq!(out["sockets"], 0, "the page opened a socket after the disconnect: {out}");
    assert_eq!(out["url"], format!("http://{}/", stack.front()), "{out}");
    assert_eq!(out["title"], "Warren · sign in", "{out}");
    assert_eq!(out["login_form"], true, "{out}");
    assert_eq!(out["chat"], false, "the chat is still on the page: {out}");
    script.finish().await?;

    // The cookie the page had is dead on every gateway, for both doors.
    for gateway in &stack.gateways {
        let mut client = Client::new(gateway.addr);
        client.cookie = Some(cookie.clone());
        let status = client.get("/session").await?.status;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "GET /session on {}", gateway.instance);
        match ws::connect(gateway.addr, Some(&cookie), None).await {
            Err(Refused::Status(status)) => assert_eq!(status, 401, "/ws on {}", gateway.instance),
            Err(Refused::Other(error)) => bail!("/ws on {}: {error}", gateway.instance),
            Ok(_) => bail!("/ws on {} took the ended session", gateway.instance),
        }
    }

    // And the user has left the room.
    wait_members(backend, &room, |members| !members.contains(&user)).await
}
