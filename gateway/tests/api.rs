//! The server API, on real gateways behind HAProxy with a real bridge,
//! Redis and RabbitMQ: a backend posts into a room that a WebSocket user is
//! in, reads it back, sees who is there and disconnects a user on every
//! gateway.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use testkit::http::{Client, Reply};
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Refused};

const TOKEN: &str = "api-test-token-0123456789abcdef0123456789";

async fn stack_with_api(gateways: usize) -> anyhow::Result<Stack> {
    let extras = Extras { gateway_env: vec![("GATEWAY_API_TOKEN".to_owned(), TOKEN.to_owned())], ..Extras::default() };
    Stack::start_with(Shape { bridges: 1, gateways, haproxy: true }, extras).await
}

/// One API call; `token` goes in `Authorization: Bearer`, `cookie` as the
/// browser's session cookie.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
    cookie: Option<&str>,
) -> anyhow::Result<Reply> {
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("jsessionid={cookie}"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    testkit::http::send(addr, request.body(Full::new(Bytes::from(body)))?).await
}

async fn api(addr: SocketAddr, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Reply> {
    call(addr, method, path, body, Some(TOKEN), None).await
}

/// The error code of a refused call, checking its status.
fn refused_with(reply: &Reply, status: StatusCode) -> anyhow::Result<String> {
    anyhow::ensure!(reply.status == status, "expected {status}, got {}: {}", reply.status, reply.text());
    Ok(reply.json()?["code"].as_str().context("an error has a code")?.to_owned())
}

async fn logged_in_socket(addr: SocketAddr, user: &str) -> anyhow::Result<(Client, ws::Socket)> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    let socket = ws::connect(addr, client.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((client, socket))
}

#[tokio::test]
async fn a_backend_posts_reads_and_sees_who_is_there() -> anyhow::Result<()> {
    let stack = stack_with_api(2).await?;
    let front = stack.front();
    let room = testkit::unique("api");
    let reader = testkit::unique("reader");
    let (_, mut socket) = logged_in_socket(stack.gateways[0].addr, &reader).await?;
    socket.join(&room, None).await?;

    // Posted through the balancer, delivered to a socket on gw-1.
    let path = format!("/api/v1/rooms/{room}/messages");
    let post = json!({"user": "billing-bot", "text": "invoice ready", "idempotency_key": "inv-1"});
    let reply = api(front, Method::POST, &path, Some(&post)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let id = reply.json()?["id"].as_u64().context("an id")?;
    let message = socket.next_of_type("message").await?;
    assert_eq!(
        (message["id"].as_u64(), message["user"].as_str(), message["text"].as_str(), message["cid"].as_str()),
        (Some(id), Some("billing-bot"), Some("invoice ready"), Some("inv-1"))
    );

    // A retry with the same key is the same message, not a second one.
    let again = api(front, Method::POST, &path, Some(&post)).await?;
    assert_eq!(again.json()?["id"].as_u64(), Some(id), "same key, same id");
    let second = json!({"user": "billing-bot", "text": "second", "idempotency_key": "inv-2"});
    let second_id = api(front, Method::POST, &path, Some(&second)).await?.json()?["id"].as_u64().context("id")?;
    let next = socket.next_of_type("message").await?;
    assert_eq!(next["id"].as_u64(), Some(second_id), "nothing between: the retry made no message");

    // History, oldest first, in pages.
    let all = api(front, Method::GET, &format!("{path}?since=0"), None).await?.json()?;
    let ids: Vec<u64> =
        all["messages"].as_array().context("messages")?.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(ids, [id, second_id]);
    assert_eq!(all["more"], false);
    let first_page = api(front, Method::GET, &format!("{path}?since=0&limit=1"), None).await?.json()?;
    assert_eq!(first_page["messages"][0]["id"].as_u64(), Some(id));
    assert_eq!(first_page["more"], true);
    let since = first_page["next_since"].as_u64().context("next_since")?;
    let rest = api(front, Method::GET, &format!("{path}?since={since}&limit=1"), None).await?.json()?;
    assert_eq!(rest["messages"][0]["id"].as_u64(), Some(second_id));

    // Presence: the socket's user, seen from either gateway.
    for gateway in &stack.gateways {
        let presence = api(gateway.addr, Method::GET, &format!("/api/v1/rooms/{room}/presence"), None).await?;
        assert_eq!(presence.json()?["members"], json!([reader]), "from {}", gateway.addr);
    }

    // The metrics count the calls by route and status.
    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await?.text();
    assert!(metrics.contains(r#"warren_gateway_api_requests_total{route="presence",status="200"} 1"#), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn bad_calls_get_a_status_and_a_code() -> anyhow::Result<()> {
    let stack = stack_with_api(1).await?;
    let addr = stack.gateways[0].addr;
    let path = format!("/api/v1/rooms/{}/messages", testkit::unique("bad"));
    let good = json!({"user": "bot", "text": "hi", "idempotency_key": "k"});

    // Only the token authenticates: not a missing or wrong one, not a
    // browser's session.
    let mut browser = Client::new(addr);
    browser.login("somebody").await?;
    let cookie = browser.cookie.clone().context("cookie")?;
    for (token, cookie) in [(None, None), (Some("wrong-token-0123456789abcdef012345"), None), (None, Some(&*cookie))] {
        let reply = call(addr, Method::POST, &path, Some(&good), token, cookie).await?;
        assert_eq!(refused_with(&reply, StatusCode::UNAUTHORIZED)?, "unauthorized");
        assert_eq!(reply.headers.get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    }

    let cases = [
        (json!({"user": "bot", "text": "hi"}), "bad_json"),
        (json!({"user": "no spaces", "text": "hi", "idempotency_key": "k"}), "bad_user"),
        (json!({"user": "bot", "text": "  ", "idempotency_key": "k"}), "bad_text"),
        (json!({"user": "bot", "text": "x".repeat(4001), "idempotency_key": "k"}), "bad_text"),
        (json!({"user": "bot", "text": "hi", "idempotency_key": ""}), "bad_idempotency_key"),
        (json!({"user": "bot", "text": "hi", "idempotency_key": "k", "extra": 1}), "bad_json"),
    ];
    for (body, code) in cases {
        let reply = api(addr, Method::POST, &path, Some(&body)).await?;
        assert_eq!(refused_with(&reply, StatusCode::BAD_REQUEST)?, code, "{body}");
    }
    let bad_room = api(addr, Method::POST, "/api/v1/rooms/No%20Room/messages", Some(&good)).await?;
    assert_eq!(refused_with(&bad_room, StatusCode::BAD_REQUEST)?, "bad_room");
    let huge = json!({"user": "bot", "text": "x".repeat(40_000), "idempotency_key": "k"});
    assert_eq!(
        refused_with(&api(addr, Method::POST, &path, Some(&huge)).await?, StatusCode::PAYLOAD_TOO_LARGE)?,
        "too_large"
    );
    let limit = api(addr, Method::GET, &format!("{path}?limit=0"), None).await?;
    assert_eq!(refused_with(&limit, StatusCode::BAD_REQUEST)?, "bad_limit");
    let unknown = api(addr, Method::GET, "/api/v1/rooms", None).await?;
    assert_eq!(refused_with(&unknown, StatusCode::NOT_FOUND)?, "not_found");
    let method = api(addr, Method::DELETE, &path, None).await?;
    assert_eq!(refused_with(&method, StatusCode::METHOD_NOT_ALLOWED)?, "method_not_allowed");
    assert_eq!(method.headers.get(header::ALLOW).map(|v| v.as_bytes()), Some(&b"GET, POST"[..]));
    // The fields in an array are not the object the contract names.
    let array = api(addr, Method::POST, &path, Some(&json!(["bot", "hi", "k"]))).await?;
    assert_eq!(refused_with(&array, StatusCode::BAD_REQUEST)?, "bad_json");

    // The per-user send rate holds here too (20/s, burst 40).
    let mut limited = None;
    for n in 0..60 {
        let body = json!({"user": "hasty-bot", "text": "hi", "idempotency_key": format!("h{n}")});
        let reply = api(addr, Method::POST, &path, Some(&body)).await?;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.context("60 posts at once were all accepted")?;
    assert_eq!(refused_with(&limited, StatusCode::TOO_MANY_REQUESTS)?, "rate_limited");
    assert!(limited.headers.contains_key(header::RETRY_AFTER), "says when to retry");
    Ok(())
}

#[tokio::test]
async fn the_api_is_off_without_a_token() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: false }).await?;
    let reply =
        call(stack.gateways[0].addr, Method::GET, "/api/v1/rooms/lobby/presence", None, Some(TOKEN), None).await?;
    assert_eq!(refused_with(&reply, StatusCode::NOT_FOUND)?, "not_found");
    Ok(())
}

#[tokio::test]
async fn a_disconnect_closes_the_user_everywhere_and_can_end_the_sessions() -> anyhow::Result<()> {
    let stack = stack_with_api(2).await?;
    let user = testkit::unique("kicked");
    let (mut first, mut on_one) = logged_in_socket(stack.gateways[0].addr, &user).await?;
    let (_, mut on_two) = logged_in_socket(stack.gateways[1].addr, &user).await?;
    let (_, mut bystander) = logged_in_socket(stack.gateways[0].addr, &testkit::unique("stays")).await?;
    for socket in [&mut on_one, &mut on_two, &mut bystander] {
        socket.next_of_type("welcome").await?;
    }

    let path = format!("/api/v1/users/{user}/disconnect");
    let reply = api(stack.front(), Method::POST, &path, None).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()?["sessions_ended"], 0);
    for socket in [&mut on_one, &mut on_two] {
        assert_eq!(socket.closed_with().await?, (1008, "disconnected by the server".to_owned()));
    }
    bystander.send(&json!({"type": "ping"})).await?;
    assert_eq!(bystander.next_of_type("pong").await?["type"], "pong", "another user's socket stays");

    // Without ending the sessions the user may come back.
    let cookie = first.cookie.clone().context("cookie")?;
    let mut back =
        ws::connect(stack.gateways[0].addr, Some(&cookie), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    back.next_of_type("welcome").await?;

    // Ending them closes the socket and the session: no way back on it. The
    // sessions end first (a logout each), so the close says so.
    let reply = api(stack.front(), Method::POST, &path, Some(&json!({"end_sessions": true}))).await?;
    assert_eq!(reply.json()?["sessions_ended"], 2, "both logins of the user");
    assert_eq!(back.closed_with().await?, (1008, "session ended".to_owned()));
    assert_eq!(first.get("/session").await?.status, StatusCode::UNAUTHORIZED);
    match ws::connect(stack.gateways[1].addr, Some(&cookie), None).await {
        Err(Refused::Status(status)) => assert_eq!(status, 401),
        other => anyhow::bail!("the ended session still opens a socket: {:?}", other.is_ok()),
    }
    Ok(())
}
