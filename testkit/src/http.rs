//! A small HTTP/1.1 client: one connection per request, one cookie jar slot
//! (the session cookie, `jsessionid` unless named otherwise), nothing hidden.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The gateways' session cookie unless `GATEWAY_SESSION_COOKIE_NAME` says otherwise.
pub const DEFAULT_COOKIE_NAME: &str = "jsessionid";

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// When it is not JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }

    /// The `jsessionid` value this reply sets, if any (still URL-encoded).
    pub fn session_cookie(&self) -> Option<String> {
        self.cookie(DEFAULT_COOKIE_NAME)
    }

    /// The value this reply sets for the cookie named exactly `name`, if
    /// any (still URL-encoded).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookie| {
            let value = cookie.strip_prefix(name)?.strip_prefix('=')?;
            let value = value.split(';').next()?;
            (!value.is_empty()).then(|| value.to_owned())
        })
    }
}

/// A client of one address with an optional session cookie.
#[derive(Debug, Clone)]
pub struct Client {
    /// Where requests go.
    pub addr: SocketAddr,
    /// The session cookie's value, sent with every request, updated from
    /// every `Set-Cookie` (as a browser would).
    pub cookie: Option<String>,
    /// The session cookie's name (the gateways' `GATEWAY_SESSION_COOKIE_NAME`).
    pub cookie_name: String,
}

impl Client {
    /// A client without a session, for gateways with the default cookie name.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, cookie: None, cookie_name: DEFAULT_COOKIE_NAME.to_owned() }
    }

    /// The same client, for gateways whose session cookie is named `name`.
    #[must_use]
    pub fn with_cookie_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.cookie_name);
        self
    }

    /// The `Cookie` header this client sends (`name=value`), if it has a session.
    pub fn cookie_header(&self) -> Option<String> {
        self.cookie.as_ref().map(|value| format!("{}={value}", self.cookie_name))
    }

    /// Sends a request with the cookie; keeps any new cookie.
    ///
    /// # Errors
    /// When the server cannot be reached or the exchange fails.
    pub async fn request(&mut self, method: Method, path: &str, body: Option<&str>) -> anyhow::Result<Reply> {
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, self.addr.to_string());
        if let Some(cookie) = self.cookie_header() {
            builder = builder.header(header::COOKIE, cookie);
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?;
        let reply = send(self.addr, request).await?;
        if let Some(cookie) = reply.cookie(&self.cookie_name) {
            self.cookie = Some(cookie);
        }
        Ok(reply)
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// Logs in as `user` through `POST /login`.
    ///
    /// # Errors
    /// When the login is not answered with `303` and a cookie.
    pub async fn login(&mut self, user: &str) -> anyhow::Result<Reply> {
        let reply = self.request(Method::POST, "/login", Some(&format!("user={user}"))).await?;
        anyhow::ensure!(reply.status == StatusCode::SEE_OTHER, "login answered {}: {}", reply.status, reply.text());
        anyhow::ensure!(reply.cookie(&self.cookie_name).is_some(), "login set no {} cookie", self.cookie_name);
        Ok(reply)
    }
}

/// Sends one request on a fresh connection.
///
/// # Errors
/// When the server cannot be reached or the exchange fails.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}
