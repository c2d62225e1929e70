//! A small HTTP/1.1 client: one connection per request, one cookie jar slot
//! (`jsessionid`), nothing hidden.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookie| {
            let value = cookie.strip_prefix("jsessionid=")?;
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
    /// The `jsessionid` cookie value sent with every request, updated from
    /// every `Set-Cookie` (as a browser would).
    pub cookie: Option<String>,
}

impl Client {
    /// A client without a session.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, cookie: None }
    }

    /// Sends a request with the cookie; keeps any new cookie.
    ///
    /// # Errors
    /// When the server cannot be reached or the exchange fails.
    pub async fn request(&mut self, method: Method, path: &str, body: Option<&str>) -> anyhow::Result<Reply> {
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, self.addr.to_string());
        if let Some(cookie) = &self.cookie {
            builder = builder.header(header::COOKIE, format!("jsessionid={cookie}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?;
        let reply = send(self.addr, request).await?;
        if let Some(cookie) = reply.session_cookie() {
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
        anyhow::ensure!(reply.session_cookie().is_some(), "login set no cookie");
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
