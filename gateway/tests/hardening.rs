//! Hostile and broken clients get clear answers, and everyone else keeps
//! chatting: limits, bad frames, cross-site posts, slow readers.

mod support;

use std::time::Duration;

use anyhow::Context;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use support::raw::{self, masked};
use support::{one_gateway, one_gateway_own_broker, open};
use testkit::http::Client;
use testkit::ws::{self, Event, Refused, Socket};
use tokio::io::AsyncWriteExt;

async fn close_of(socket: &mut Socket) -> anyhow::Result<(u16, String)> {
    loop {
        if let Event::Close(code, reason) = socket.next_event().await? {
            return Ok((code, reason));
        }
    }
}

#[tokio::test]
async fn limits_answer_with_errors_and_statuses() -> anyhow::Result<()> {
    let stack = one_gateway(&[
        ("GATEWAY_SEND_RATE", "2"),
        ("GATEWAY_MAX_ROOMS_PER_SOCKET", "2"),
        ("GATEWAY_MAX_SOCKETS_PER_USER", "2"),
        ("GATEWAY_MAX_MESSAGE_BYTES", "2048"),
    ])
    .await?;
    let addr = stack.gateways[0].addr;
    let mut client = Client::new(addr);
    client.login("limited").await?;
    let cookie = client.cookie.clone().context("cookie")?;
    let mut socket = open(addr, &cookie).await?;

    let (a, b) = (testkit::unique("a"), testkit::unique("b"));
    socket.join(&a, None).await?;
    socket.join(&b, None).await?;
    socket.send(&json!({"type":"join","room":"third"})).await?;
    assert_eq!(socket.next_of_type("error").await?["code"], "too_many_rooms");

    // The burst is twice the rate (4); the 5th send in a row waits.
    for n in 0..6 {
        socket.send(&json!({"type":"send","room":a,"text":"fast","cid":format!("f{n}")})).await?;
    }
    let limited = socket.next_matching(|f| f["code"] == "rate_limited").await?;
    assert!(limited["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{limited}");
    assert!(limited["cid"].as_str().is_some_and(|cid| cid.starts_with('f')));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    socket.send_message(&a, "after waiting", "late").await?;

    // Two sockets per user; the third is refused at the handshake.
    let _second = open(addr, &cookie).await?;
    match ws::connect(addr, Some(&cookie), None).await {
        Err(Refused::Status(503)) => {}
        other => anyhow::bail!("expected 503, got {other:?}"),
    }

    // A message over the size limit closes with 1009.
    socket.send_text(&format!(r#"{{"type":"send","room":"{a}","text":"{}","cid":"big"}}"#, "x".repeat(3000))).await?;
    assert_eq!(close_of(&mut socket).await?.0, 1009);
    Ok(())
}

#[tokio::test]
async fn a_sender_that_ignores_its_limit_is_closed_with_1008() -> anyhow::Result<()> {
    let stack = one_gateway(&[("GATEWAY_SEND_RATE", "1")]).await?;
    let addr = stack.gateways[0].addr;
    let mut client = Client::new(addr);
    client.login("flooder").await?;
    let mut socket = open(addr, client.cookie.as_deref().context("cookie")?).await?;
    let room = testkit::unique("flood");
    socket.join(&room, None).await?;
    for n in 0..80 {
        if socket.send(&json!({"type":"send","room":room,"text":"x","cid":format!("c{n}")})).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_of(&mut socket).await?;
    assert_eq!(code, 1008);
    assert!(reason.contains("rate limit"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn handshakes_per_address_are_limited() -> anyhow::Result<()> {
    let stack = one_gateway(&[("GATEWAY_HANDSHAKE_RATE", "1")]).await?;
    let addr = stack.gateways[0].addr;
    let mut client = Client::new(addr);
    client.login("eager").await?;
    let cookie = client.cookie.clone().context("cookie")?;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(match ws::connect(addr, Some(&cookie), None).await {
            Ok(_) => 101,
            Err(Refused::Status(status)) => status,
            Err(Refused::Other(error)) => return Err(error),
        });
    }
    assert_eq!(&statuses[..2], &[101, 101], "a burst of two");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    Ok(())
}

#[tokio::test]
async fn cross_site_form_posts_are_refused() -> anyhow::Result<()> {
    let stack = one_gateway(&[]).await?;
    let addr = stack.gateways[0].addr;
    let post = |origin: Option<&'static str>, fetch_site: Option<&'static str>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/login")
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        request.body(Full::new(bytes::Bytes::from_static(b"user=victim")))
    };
    let evil = testkit::http::send(addr, post(Some("http://evil.example"), None)?).await?;
    assert_eq!(evil.status, StatusCode::FORBIDDEN);
    let cross = testkit::http::send(addr, post(None, Some("cross-site"))?).await?;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    let own = Box::leak(format!("http://{addr}").into_boxed_str());
    let same = testkit::http::send(addr, post(Some(own), Some("same-origin"))?).await?;
    assert_eq!(same.status, StatusCode::SEE_OTHER);
    Ok(())
}

#[tokio::test]
async fn broken_frames_get_their_close_codes_and_others_carry_on() -> anyhow::Result<()> {
    let stack = one_gateway(&[]).await?;
    let addr = stack.gateways[0].addr;
    let mut client = Client::new(addr);
    client.login("breaker").await?;
    let cookie = client.cookie.clone().context("cookie")?;

    let mut bystander = open(addr, &cookie).await?;
    let room = testkit::unique("bystander");
    bystander.join(&room, None).await?;

    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("invalid UTF-8", masked(true, 0x1, &[0xff, 0xfe, 0xfd]), 1007),
        ("fragmented ping", masked(false, 0x9, b"hi"), 1002),
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
    ];
    for (what, frame, code) in cases {
        let mut stream = raw::connect(addr, &cookie).await?;
        stream.write_all(&frame).await?;
        assert_eq!(raw::frames_until_close(&mut stream).await.context(what)?.code, code, "{what}");
    }
    // The gateway and the other socket are unaffected.
    let id = bystander.send_message(&room, "still fine", "ok").await?;
    bystander.messages_until(&room, id).await?;
    Ok(())
}

/// How long the bulk test's clients wait for one frame. Its 10 MB per
/// reader went through in 3-5 s on an idle machine, but once stalled for
/// more than 10 s (CI, with another test beside it); what it checks is that
/// nothing is lost, not how fast.
const BULK_PATIENCE: Duration = Duration::from_secs(40);

#[tokio::test]
async fn a_socket_that_stops_reading_is_closed_and_others_get_everything() -> anyhow::Result<()> {
    // 10 MB a run: on a RabbitMQ node of its own (see the helper).
    let (stack, _rabbit) = one_gateway_own_broker(&[
        ("GATEWAY_MAX_QUEUE_BYTES", "2097152"),
        ("GATEWAY_SEND_RATE", "10000"),
        ("GATEWAY_USER_SEND_RATE", "10000"),
    ])
    .await?;
    let addr = stack.gateways[0].addr;
    let room = testkit::unique("slow");
    let mut client = Client::new(addr);
    client.login("reader").await?;
    let cookie = client.cookie.clone().context("cookie")?;

    // The slow socket joins, then never reads again.
    let mut slow = raw::connect(addr, &cookie).await.context("slow socket")?;
    slow.write_all(&masked(true, 0x1, format!(r#"{{"type":"join","room":"{room}"}}"#).as_bytes()))
        .await
        .context("slow join")?;
    let count = 2500;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut reader = open(addr, &cookie).await.context("reader open")?.with_patience(BULK_PATIENCE);
        reader.join(&room, None).await.context("reader join")?;
        let room = room.clone();
        // Readers that read: each on its own task, as fast as it can.
        readers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < count {
                let message = reader
                    .next_matching(|f| f["type"] == "message" && f["room"] == room)
                    .await
                    .with_context(|| format!("reader, after {} messages", ids.len()))?;
                ids.push(message["id"].as_u64().context("id")?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut sender = open(addr, &cookie).await.context("sender open")?.with_patience(BULK_PATIENCE);
    sender.join(&room, None).await.context("sender join")?;
    let text = "y".repeat(4000);
    // The sender reads too (between batches): it is a member of the room,
    // and a member that does not read is exactly what this test closes.
    // A retryable error is answered as the protocol says: the same send,
    // same cid, again (the bridge keeps it from being delivered twice).
    let send = |cid: &str| json!({"type":"send","room":room,"text":text,"cid":cid});
    for batch in 0..count / 100 {
        for n in batch * 100..(batch + 1) * 100 {
            sender.send(&send(&format!("s{n}"))).await.context("send")?;
        }
        let mut acked = 0;
        while acked < 100 {
            let answer = sender
                .next_matching(|f| f["type"] == "ack" || (f["type"] == "error" && f["cid"].is_string()))
                .await
                .with_context(|| format!("sender, ack {acked} of batch {batch}"))?;
            if answer["type"] == "ack" {
                acked += 1;
                continue;
            }
            let retryable = matches!(answer["code"].as_str(), Some("unavailable" | "timeout"));
            anyhow::ensure!(retryable, "send refused: {answer}");
            sender.send(&send(answer["cid"].as_str().unwrap_or_default())).await.context("send again")?;
        }
        sender.discard_kept();
    }
    for reader in readers {
        let ids = reader.await??;
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(ids.len(), count, "every message reached the readers that read");
    }
    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await.context("metrics")?.text();
    assert!(metrics.contains(r#"warren_gateway_sockets_closed_total{reason="slow",code="1008"} 1"#), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_and_one_that_answers_stays() -> anyhow::Result<()> {
    let stack = one_gateway(&[("GATEWAY_PING_INTERVAL", "300ms"), ("GATEWAY_IDLE_TIMEOUT", "1s")]).await?;
    let addr = stack.gateways[0].addr;
    let mut client = Client::new(addr);
    client.login("quiet").await?;
    let cookie = client.cookie.clone().context("cookie")?;

    // A peer that reads but never answers: pinged, then closed as idle.
    let mut mute = raw::connect(addr, &cookie).await?;
    let closed = raw::frames_until_close(&mut mute).await?;
    assert!(closed.frames.iter().any(|(opcode, _)| *opcode == 0x9), "pinged before being closed: {closed:?}");
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "timeout: no pong"));

    // A client that answers pings (fastwebsockets does while it reads) is
    // still there after three idle timeouts.
    let mut live = open(addr, &cookie).await?;
    let quiet = tokio::time::timeout(Duration::from_secs(3), live.next_json()).await;
    assert!(quiet.is_err(), "nothing but pings for 3 s, got {quiet:?}");
    live.send(&json!({"type":"ping"})).await?;
    assert_eq!(live.next_of_type("pong").await?["type"], "pong");

    let metrics = Client::new(stack.gateways[0].admin).get("/metrics").await.context("metrics")?.text();
    assert!(metrics.contains(r#"warren_gateway_sockets_closed_total{reason="idle",code="1008"} 1"#), "{metrics}");
    Ok(())
}
