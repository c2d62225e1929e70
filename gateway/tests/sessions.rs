//! Logins, refreshes and socket refusals, through a real HAProxy in front of
//! real gateways, against the real Redis.

use anyhow::Context;
use http::StatusCode;
use redis::AsyncCommands;
use testkit::http::Client;
use testkit::stack::{Shape, Stack, redis_url};
use testkit::ws::{self, Refused};

fn sid_of(cookie: &str) -> anyhow::Result<String> {
    let decoded = percent_encoding::percent_decode_str(cookie).decode_utf8()?;
    let signed = decoded.strip_prefix("s:").context("cookie without s: prefix")?;
    Ok(signed.rsplit_once('.').context("cookie without signature")?.0.to_owned())
}

async fn refused(addr: std::net::SocketAddr, cookie: Option<&str>, origin: Option<&str>) -> anyhow::Result<u16> {
    match ws::connect(addr, cookie, origin).await {
        Err(Refused::Status(status)) => Ok(status),
        Err(Refused::Other(error)) => Err(error),
        Ok(_) => anyhow::bail!("the socket was accepted"),
    }
}

#[tokio::test]
async fn login_refresh_and_session_rotation() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: true }).await?;
    let mut browser = Client::new(stack.front());

    let page = browser.get("/").await?;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("action=\"/login\""), "without a session / is the login page");
    assert_eq!(browser.get("/session").await?.status, StatusCode::UNAUTHORIZED);

    let bad = browser.request(http::Method::POST, "/login", Some("user=bad%20name%21")).await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("may contain only letters"), "the reason is shown: {}", bad.text());
    assert!(bad.session_cookie().is_none());

    let user = testkit::unique("alice");
    let login = browser.login(&user).await?;
    let cookie = login.headers.get(http::header::SET_COOKIE).context("cookie")?.to_str()?.to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"));
    let first_sid = sid_of(browser.cookie.as_deref().context("cookie kept")?)?;

    // A refresh keeps you logged in, with a new session id and the same user.
    let chat = browser.get("/").await?;
    assert_eq!(chat.status, StatusCode::OK);
    assert!(chat.text().contains("id=\"me\""), "with a session / is the chat page");
    assert!(chat.headers.get("content-security-policy").is_some());
    let second_sid = sid_of(browser.cookie.as_deref().context("cookie kept")?)?;
    assert_ne!(first_sid, second_sid, "GET / regenerates the session id");

    let session = browser.get("/session").await?;
    assert_eq!(session.status, StatusCode::OK);
    assert_eq!(session.json()?["user"], user.as_str());
    let third_sid = sid_of(browser.cookie.as_deref().context("cookie kept")?)?;
    assert_ne!(second_sid, third_sid, "GET /session regenerates the session id");

    // The record is in Redis, in the express-session shape, under the new id.
    let mut redis = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let raw: String = redis.get(format!("sess:{third_sid}")).await?;
    let record: serde_json::Value = serde_json::from_str(&raw)?;
    assert_eq!(record["user"], user.as_str());
    assert_eq!(record["cookie"]["httpOnly"], true);
    let ttl: i64 = redis.ttl(format!("sess:{third_sid}")).await?;
    assert!(ttl > 86_000, "TTL is the max age, got {ttl}");

    // Logout deletes it.
    let logout = browser.request(http::Method::POST, "/logout", None).await?;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    let exists: bool = redis.exists(format!("sess:{third_sid}")).await?;
    assert!(!exists, "logout deletes the session record");
    Ok(())
}

#[tokio::test]
async fn sockets_need_a_valid_session_and_an_allowed_origin() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 1, haproxy: true }).await?;
    let front = stack.front();
    let mut alice = Client::new(front);
    alice.login(&testkit::unique("alice")).await?;
    let cookie = alice.cookie.clone().context("cookie")?;

    assert_eq!(refused(front, None, None).await?, 401, "no cookie");
    let forged = format!("{}AAAA", &cookie[..cookie.len() - 4]);
    assert_eq!(refused(front, Some(&forged), None).await?, 401, "forged signature");
    assert_eq!(refused(front, Some("s%3Anot-signed"), None).await?, 401, "unsigned");
    assert_eq!(refused(front, Some(&cookie), Some("http://evil.example")).await?, 403, "foreign origin");

    // Same-origin and Origin-less (non-browser) clients get in.
    let same_origin = format!("http://{front}");
    let mut socket =
        ws::connect(front, Some(&cookie), Some(&same_origin)).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(socket.next_json().await?["type"], "welcome");

    // Expired: the record says it expired (Redis still has it).
    let sid = sid_of(&cookie)?;
    let mut redis = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let raw: String = redis.get(format!("sess:{sid}")).await?;
    let expired = raw.replace(
        &serde_json::from_str::<serde_json::Value>(&raw)?["cookie"]["expires"].as_str().context("expires")?.to_owned(),
        "2001-01-01T00:00:00.000Z",
    );
    let _: () = redis.set(format!("sess:{sid}"), expired).await?;
    assert_eq!(refused(front, Some(&cookie), None).await?, 401, "expired session");

    // Deleted: logged out.
    let mut bob = Client::new(front);
    bob.login(&testkit::unique("bob")).await?;
    let bob_cookie = bob.cookie.clone().context("cookie")?;
    bob.request(http::Method::POST, "/logout", None).await?;
    assert_eq!(refused(front, Some(&bob_cookie), None).await?, 401, "deleted session");
    Ok(())
}

#[tokio::test]
async fn logout_closes_the_login_sockets_on_every_gateway() -> anyhow::Result<()> {
    let stack = Stack::start(Shape { bridges: 1, gateways: 2, haproxy: false }).await?;
    let (one, two) = (stack.gateways[0].addr, stack.gateways[1].addr);
    let mut browser = Client::new(one);
    browser.login(&testkit::unique("leaver")).await?;
    let first = browser.cookie.clone().context("cookie")?;
    let mut on_one = ws::connect(one, Some(&first), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    on_one.next_json().await?;
    // The same login, after a refresh (a new session id), on the other gateway.
    browser.addr = two;
    browser.get("/session").await?;
    let second = browser.cookie.clone().context("cookie")?;
    assert_ne!(first, second);
    let mut on_two = ws::connect(two, Some(&second), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    on_two.next_json().await?;
    // Someone else's socket stays open.
    let mut other = Client::new(one);
    other.login(&testkit::unique("stayer")).await?;
    let mut stays = ws::connect(one, other.cookie.as_deref(), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    stays.next_json().await?;

    let started = std::time::Instant::now();
    browser.addr = one;
    assert_eq!(browser.request(http::Method::POST, "/logout", None).await?.status, StatusCode::SEE_OTHER);
    for socket in [&mut on_one, &mut on_two] {
        assert_eq!(socket.closed_with().await?, (1008, "session ended".to_owned()));
    }
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "closed everywhere in {took:?}");
    stays.send(&serde_json::json!({"type":"ping"})).await?;
    assert_eq!(stays.next_of_type("pong").await?["type"], "pong", "other logins are untouched");
    Ok(())
}

#[tokio::test]
async fn an_expired_login_has_its_sockets_closed() -> anyhow::Result<()> {
    let extras = testkit::stack::Extras {
        gateway_env: vec![("GATEWAY_SESSION_CHECK_INTERVAL".to_owned(), "500ms".to_owned())],
        ..testkit::stack::Extras::default()
    };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 1, haproxy: false }, extras).await?;
    let addr = stack.gateways[0].addr;
    let mut browser = Client::new(addr);
    browser.login(&testkit::unique("expiring")).await?;
    let cookie = browser.cookie.clone().context("cookie")?;
    let mut socket = ws::connect(addr, Some(&cookie), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    socket.next_json().await?;

    // Expire it the way Redis would: its keys go away.
    let mut redis = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let raw: String = redis.get(format!("sess:{}", sid_of(&cookie)?)).await?;
    let login = serde_json::from_str::<serde_json::Value>(&raw)?["login"].as_str().context("login id")?.to_owned();
    let _: () = redis.del(&[format!("sess:{}", sid_of(&cookie)?), format!("warren:login:{login}")]).await?;
    assert_eq!(socket.closed_with().await?, (1008, "session ended".to_owned()));
    Ok(())
}

#[tokio::test]
async fn a_cookie_named_otherwise_carries_the_session_alone() -> anyhow::Result<()> {
    // Cloud Foundry's router keys its affinity on `JSESSIONID`, exactly.
    let name = "JSESSIONID";
    let extras = testkit::stack::Extras {
        gateway_env: vec![("GATEWAY_SESSION_COOKIE_NAME".to_owned(), name.to_owned())],
        ..testkit::stack::Extras::default()
    };
    let stack = Stack::start_with(Shape { bridges: 1, gateways: 2, haproxy: true }, extras).await?;
    let front = stack.front();
    let mut browser = Client::new(front).with_cookie_name(name);
    let user = testkit::unique("upper");
    let login = browser.login(&user).await?;
    let set_cookie = login.headers.get(http::header::SET_COOKIE).context("Set-Cookie")?.to_str()?.to_owned();
    assert!(set_cookie.starts_with("JSESSIONID=s%3A"), "the signed express-session value: {set_cookie}");
    assert!(login.session_cookie().is_none(), "no lowercase jsessionid is set");
    let cookie = browser.cookie.clone().context("cookie kept")?;

    // The record is where express-session would look for it.
    let mut redis = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let raw: String = redis.get(format!("sess:{}", sid_of(&cookie)?)).await?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw)?["user"], user.as_str());

    // Page loads and /session see the login, and hand out the new id under the same name.
    assert!(browser.get("/").await?.text().contains("id=\"me\""), "with a session / is the chat page");
    let session = browser.get("/session").await?;
    assert_eq!(session.status, StatusCode::OK);
    assert_eq!(session.json()?["user"], user.as_str());
    assert!(session.cookie(name).is_some() && session.session_cookie().is_none());

    // The socket opens with it and knows the user from it.
    let cookies = browser.cookie_header().context("a session")?;
    let mut socket =
        ws::connect_with_cookies(front, Some(&cookies), None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let welcome = socket.next_json().await?;
    assert_eq!((welcome["type"].as_str(), welcome["user"].as_str()), (Some("welcome"), Some(user.as_str())));

    // The same signed value under the lowercase name is no session at all.
    let value = browser.cookie.clone().context("cookie kept")?;
    let mut lowercase = Client { cookie: Some(value.clone()), ..Client::new(front) };
    assert_eq!(lowercase.get("/session").await?.status, StatusCode::UNAUTHORIZED);
    assert!(lowercase.get("/").await?.text().contains("action=\"/login\""), "the login page");
    assert_eq!(refused(front, Some(&value), None).await?, 401, "a socket with only jsessionid");
    Ok(())
}
