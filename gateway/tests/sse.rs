//! The Server-Sent Events transport on real gateways, bridges, Redis and
//! RabbitMQ: the same protocol and guarantees as a WebSocket, refusals with
//! their statuses, frames posted to any gateway, logouts and drains.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http::StatusCode;
use serde_json::json;
use testkit::http::Client;
use testkit::sse;
use testkit::stack::{Extras, Shape, Stack};
use testkit::ws::{self, Refused, Socket};

/// One gateway (and a bridge) with extra environment.
async fn one_gateway(env: &[(&str, &str)]) -> anyhow::Result<Stack> {
    let gateway_env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Stack::start_with(Shape { bridges: 1, gateways: 1, haproxy: false }, Extras { gateway_env, ..Extras::default() })
        .await
}

/// Logs `user` in at `addr`; the client and its `Cookie` header.
async fn login(addr: SocketAddr, user: &str) -> anyhow::Result<(Client, String)> {
    let mut client = Client::new(addr);
    client.login(user).await?;
    let cookies = client.cookie_header().context("cookie")?;
    Ok((client, cookies))
}

/// Opens a stream and reads its `welcome`.
async fn stream(addr: SocketAddr, cookies: &str) -> anyhow::Result<(Socket, serde_json::Value)> {
    let mut socket = sse::connect(addr, Some(cookies), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = socket.next_json().await?;
    anyhow::ensure!(welcome["type"] == "welcome", "first event is welcome: {welcome}");
    Ok((socket, welcome))
}

#[tokio::test]
async fn a_stream_and_a_websocket_chat_in_one_room() -> anyhow::Result<()> {
    let stack = one_gateway(&[]).await?;
    let addr = stack.gateways[0].addr;
    let (sse_name, ws_name) = (testkit::unique("eve"), testkit::unique("walt"));
    let (_, eve_cookies) = login(addr, &sse_name).await?;
    let (_, walt_cookies) = login(addr, &ws_name).await?;
    let (mut eve, welcome) = stream(addr, &eve_cookies).await?;
    assert_eq!(welcome["user"], sse_name.as_str(), "the name comes from the session");
    assert!(welcome["stream"].as_str().is_some_and(|token| token.len() == 22), "{welcome}");
    let mut walt =
        ws::connect_with_cookies(addr, Some(&walt_cookies), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(walt.next_json().await?["type"], "welcome");

    let room = testkit::unique("mixed");
    eve.join(&room, None).await?;
    walt.join(&room, None).await?;
    // The frame's own "user" is ignored, as on a WebSocket.
    eve.send(&json!({"type":"send","room":room,"text":"from the stream","cid":"e-1","user":"mallory"})).await?;
    let ack = eve.next_of_type("ack").await?;
    let first = walt.next_of_type("message").await?;
    assert_eq!((first["user"].as_str(), first["text"].as_str()), (Some(sse_name.as_str()), Some("from the stream")));
    assert_eq!(first["id"], ack["id"]);
    let second = walt.send_message(&room, "from the socket", "w-1").await?;
    let got = eve.messages_until(&room, second).await?;
    assert!(got.iter().any(|m| m["text"] == "from the socket"), "{got:?}");

    // The same cid again is acknowledged with the same id, delivered once.
    let again = eve.send_message(&room, "from the stream", "e-1").await?;
    assert_eq!(json!(again), ack["id"]);
    let third = walt.send_message(&room, "after", "w-2").await?;
    let seen = walt.messages_until(&room, third).await?;
    assert_eq!(seen.iter().filter(|m| m["id"] == ack["id"]).count(), 0, "not delivered twice: {seen:?}");

    // A stream that comes back resumes by `since`: history it missed, once.
    let (mut back, _) = stream(addr, &eve_cookies).await?;
    back.join(&room, first["id"].as_u64()).await?;
    let replayed = back.messages_until(&room, third).await?;
    let texts: Vec<_> = replayed.iter().map(|m| m["text"].as_str().unwrap_or_default()).collect();
    assert_eq!(texts, ["from the socket", "after"]);

    // Bad frames are answered on the stream, as on a socket.
    back.send_text("{not json").await?;
    assert_eq!(back.next_of_type("error").await?["code"], "bad_json");
    Ok(())
}

#[tokio::test]
async fn streams_and_posts_are_refused_with_reasons() -> anyhow::Result<()> {
    let stack = one_gateway(&[("GATEWAY_MAX_MESSAGE_BYTES", "1024")]).await?;
    let addr = stack.gateways[0].addr;
    let (_, cookies) = login(addr, &testkit::unique("rita")).await?;
    let (_, other) = login(addr, &testkit::unique("otto")).await?;

    // Opening: as /ws is refused.
    let refused = |result: Result<Socket, Refused>| match result {
        Err(Refused::Status(status)) => status,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(sse::connect(addr, None, None).await), 401);
    assert_eq!(refused(sse::connect(addr, Some("jsessionid=s%3Aforged.sig"), None).await), 401);
    assert_eq!(refused(sse::connect(addr, Some(&cookies), Some("https://evil.example")).await), 403);

    let (socket, _) = stream(addr, &cookies).await?;
    let token = socket.stream_token().context("token")?.to_owned();
    let ping = r#"{"type":"ping"}"#;
    let post = |token: String, cookies: Option<String>, origin: Option<&'static str>, frame: String| async move {
        sse::post(addr, &token, cookies.as_deref(), origin, &frame).await
    };
    let accepted = post(token.clone(), Some(cookies.clone()), None, ping.to_owned()).await?;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    // Without a session, from another site, too large, malformed token.
    assert_eq!(post(token.clone(), None, None, ping.to_owned()).await?.status, StatusCode::UNAUTHORIZED);
    let foreign = post(token.clone(), Some(cookies.clone()), Some("https://evil.example"), ping.to_owned()).await?;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let big = post(token.clone(), Some(cookies.clone()), None, "x".repeat(2048)).await?;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", big.text());
    let malformed = post("nope".to_owned(), Some(cookies.clone()), None, ping.to_owned()).await?;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    // A token no gateway holds, or one posted under another login: 404.
    let gone = post(sse_token_that_does_not_exist(), Some(cookies.clone()), None, ping.to_owned()).await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.json()?["error"].as_str().is_some_and(|e| e.contains("open /sse again")), "{}", gone.text());
    let stolen = post(token.clone(), Some(other), None, ping.to_owned()).await?;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND, "a token is only good with its own login");

    // The stream is still fine, and counted its refusals.
    let mut socket = socket;
    assert_eq!(socket.next_of_type("pong").await?["type"], "pong");
    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await?.text();
    assert!(metrics.contains(r#"warren_gateway_sse_posts_total{result="accepted"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"warren_gateway_sse_posts_total{result="gone"} 2"#), "{metrics}");
    Ok(())
}

fn sse_token_that_does_not_exist() -> String {
    "A".repeat(22)
}

#[tokio::test]
async fn posts_reach_the_stream_through_any_gateway_in_order() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let (holder, other) = (stack.gateways[0].addr, stack.gateways[1].addr);
    let (_, cookies) = login(holder, &testkit::unique("ann")).await?;
    let (mut ann, _) = stream(holder, &cookies).await?;
    let token = ann.stream_token().context("token")?.to_owned();
    let room = testkit::unique("hops");
    // Every frame lands on another gateway than the one before it: the
    // join must still come before the sends, and the sends in order.
    let frames = std::iter::once(json!({"type":"join","room":room}))
        .chain((0..10).map(|n| json!({"type":"send","room":room,"text":format!("m{n}"),"cid":format!("c{n}")})));
    for (n, frame) in frames.enumerate() {
        let addr = if n % 2 == 0 { other } else { holder };
        let reply = sse::post(addr, &token, Some(&cookies), None, &frame.to_string()).await?;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "frame {n} via {addr}: {}", reply.text());
    }
    assert_eq!(ann.next_of_type("joined").await?["room"], room.as_str());
    let mut texts = Vec::new();
    for _ in 0..10 {
        let message = ann.next_of_type("message").await?;
        texts.push(message["text"].as_str().unwrap_or_default().to_owned());
    }
    let expected: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
    assert_eq!(texts, expected, "posted in order, delivered in order");
    Ok(())
}

#[tokio::test]
async fn a_logout_ends_the_stream_and_its_token() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let (holder, other) = (stack.gateways[0].addr, stack.gateways[1].addr);
    let (mut client, cookies) = login(holder, &testkit::unique("leo")).await?;
    let (mut leo, _) = stream(holder, &cookies).await?;
    let token = leo.stream_token().context("token")?.to_owned();
    // Logged out on the other gateway: the stream on this one ends.
    client.addr = other;
    client.request(http::Method::POST, "/logout", None).await?;
    assert_eq!(leo.closed_with().await?, (1008, "session ended".to_owned()));
    let posted = sse::post(holder, &token, Some(&cookies), None, r#"{"type":"ping"}"#).await?;
    assert_eq!(posted.status, StatusCode::UNAUTHORIZED, "the session is gone");
    Ok(())
}

#[tokio::test]
async fn a_draining_gateway_tells_its_streams_to_reconnect() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let (holder, other) = (stack.gateways[0].addr, stack.gateways[1].addr);
    let (_, cookies) = login(holder, &testkit::unique("dora")).await?;
    let (mut dora, _) = stream(holder, &cookies).await?;
    let token = dora.stream_token().context("token")?.to_owned();
    let room = testkit::unique("drain");
    dora.join(&room, None).await?;
    let before = dora.send_message(&room, "before", "d-1").await?;

    stack.gateways[0].process.signal("TERM").await?;
    let notice = dora.next_of_type("reconnect").await?;
    assert!(notice["after_ms"].as_u64().is_some_and(|ms| ms <= 1000), "{notice}");
    // Until the stream ends it still takes frames, posted to any gateway.
    let posted = sse::post(other, &token, Some(&cookies), None, r#"{"type":"ping"}"#).await?;
    assert_eq!(posted.status, StatusCode::ACCEPTED);
    assert_eq!(dora.closed_with().await?, (1012, "server restarting".to_owned()));
    let gone = sse::post(other, &token, Some(&cookies), None, r#"{"type":"ping"}"#).await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "the stream exists nowhere now");

    // Back on the other gateway with the same session: nothing missed.
    let (mut back, welcome) = stream(other, &cookies).await?;
    assert_ne!(welcome["instance"], "gw-1");
    let mut poster = ws::connect_with_cookies(other, Some(&login(other, &testkit::unique("pat")).await?.1), None)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    poster.next_json().await?;
    poster.join(&room, None).await?;
    let during = poster.send_message(&room, "while away", "p-1").await?;
    back.join(&room, Some(before)).await?;
    let missed = back.messages_until(&room, during).await?;
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0]["text"], "while away");
    Ok(())
}

#[tokio::test]
async fn a_quiet_stream_gets_heartbeats_and_stays_open() -> anyhow::Result<()> {
    let stack = one_gateway(&[("GATEWAY_PING_INTERVAL", "200ms"), ("GATEWAY_IDLE_TIMEOUT", "1s")]).await?;
    let addr = stack.gateways[0].addr;
    let (_, cookies) = login(addr, &testkit::unique("hal")).await?;
    let (mut hal, _) = stream(addr, &cookies).await?;
    // Three idle timeouts with nothing posted: a reading stream is alive.
    let quiet = tokio::time::timeout(Duration::from_secs(3), hal.next_event()).await;
    assert!(quiet.is_err(), "no event for 3 s, got {quiet:?}");
    hal.send(&json!({"type":"ping"})).await?;
    assert_eq!(hal.next_of_type("pong").await?["type"], "pong");
    Ok(())
}

#[tokio::test]
async fn a_stream_counts_against_the_users_socket_cap() -> anyhow::Result<()> {
    // Heartbeats every 20 s (the default): what gives the cap back below is
    // the gateway reading the client's close, not a failed heartbeat.
    let stack = one_gateway(&[("GATEWAY_MAX_SOCKETS_PER_USER", "1")]).await?;
    let addr = stack.gateways[0].addr;
    let (_, cookies) = login(addr, &testkit::unique("cap")).await?;
    let (first, _) = stream(addr, &cookies).await?;
    let second = ws::connect_with_cookies(addr, Some(&cookies), None).await;
    assert!(matches!(second, Err(Refused::Status(503))), "{second:?}");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sse::connect(addr, Some(&cookies), None).await {
            Ok(_) => break,
            Err(Refused::Status(503)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => anyhow::bail!("the cap was not given back within 5 s of the client leaving: {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_stream_is_an_http_1_0_response_framed_by_its_close() -> anyhow::Result<()> {
    let stack = one_gateway(&[]).await?;
    let addr = stack.gateways[0].addr;
    let (_, cookies) = login(addr, &testkit::unique("raw")).await?;
    let mut raw = tokio::net::TcpStream::connect(addr).await?;
    let request =
        format!("GET /sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCookie: {cookies}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut raw, request.as_bytes()).await?;
    let mut read = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut raw, &mut chunk))
            .await
            .context("the head in time")??;
        anyhow::ensure!(n > 0, "closed before the first event: {}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&read);
        if let Some(end) = text.find("\r\n\r\n")
            && text[end..].contains("\n\n")
        {
            break end;
        }
    };
    let text = String::from_utf8_lossy(&read).into_owned();
    let (head, body) = text.split_at(head_end);
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("content-length") && !head.contains("transfer-encoding"), "no framing: {head}");
    // The events follow the head as they are, no chunk sizes between.
    assert!(body[4..].starts_with("data: {\"type\":\"welcome\""), "{body:?}");
    Ok(())
}

#[tokio::test]
async fn posts_over_the_streams_rate_wait_with_429_and_lose_nothing() -> anyhow::Result<()> {
    // 5 POSTs a second, a burst of 10.
    let stack = one_gateway(&[("GATEWAY_SSE_POST_RATE", "5")]).await?;
    let addr = stack.gateways[0].addr;
    let (_, cookies) = login(addr, &testkit::unique("pat")).await?;
    let (mut pat, welcome) = stream(addr, &cookies).await?;
    let token = welcome["stream"].as_str().context("token")?.to_owned();
    let ping = r#"{"type":"ping"}"#;
    let (mut accepted, mut limited) = (0, None);
    for _ in 0..30 {
        let reply = sse::post(addr, &token, Some(&cookies), None, ping).await?;
        match reply.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited = Some(reply);
                break;
            }
            other => anyhow::bail!("POST answered {other}: {}", reply.text()),
        }
    }
    let limited = limited.context("30 POSTs at once never hit the rate")?;
    assert!(accepted >= 10, "the burst is accepted: {accepted}");
    let wait: u64 = limited.headers.get(http::header::RETRY_AFTER).context("Retry-After")?.to_str()?.parse()?;
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    assert!(limited.json()?["error"].as_str().is_some_and(|e| !e.is_empty()), "a reason: {}", limited.text());

    // Waited out, the next POST goes through; every accepted one was acted on.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(sse::post(addr, &token, Some(&cookies), None, ping).await?.status, StatusCode::ACCEPTED);
    for _ in 0..=accepted {
        pat.next_of_type("pong").await?;
    }
    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await?.text();
    assert!(metrics.contains(r#"warren_gateway_sse_posts_total{result="rate_limited"} 1"#), "{metrics}");
    Ok(())
}
