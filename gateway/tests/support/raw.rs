//! A WebSocket client written by hand: it writes any bytes (unmasked or
//! broken frames too) and reads only when told to, so it can be a client that
//! writes without reading.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// The longest a read of everything up to a close frame may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens `/ws` with `cookie` and reads the `101` answer, nothing more.
///
/// The receive buffer is small, so that a socket that stops reading fills
/// up soon instead of parking megabytes in the kernel.
pub async fn connect(addr: SocketAddr, cookie: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: jsessionid={cookie}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    anyhow::ensure!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    Ok(stream)
}

/// A masked client frame (a payload of at most 64 KiB).
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![(u8::from(fin) << 7) | opcode];
    match u8::try_from(payload.len()) {
        Ok(len) if len <= 125 => frame.push(0x80 | len),
        _ => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(u16::MAX).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// What a socket was sent, up to its close frame.
#[derive(Debug)]
pub struct Closed {
    /// Every frame before the close, in order: (opcode, payload).
    pub frames: Vec<(u8, Vec<u8>)>,
    /// The close frame's code.
    pub code: u16,
    /// The close frame's reason.
    pub reason: String,
}

/// Reads server frames until a close frame, within 10 s. Fails when the
/// stream ends (or is reset) first.
pub async fn frames_until_close(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Closed> {
    let mut stream = BufReader::new(stream);
    let mut frames = Vec::new();
    let read = async {
        loop {
            let opcode = stream.read_u8().await? & 0x0f;
            let len = match stream.read_u8().await? & 0x7f {
                126 => usize::from(stream.read_u16().await?),
                127 => usize::try_from(stream.read_u64().await?)?,
                n => usize::from(n),
            };
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await?;
            if opcode == 0x8 {
                let code = payload.get(..2).map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                return Ok::<_, anyhow::Error>((code, reason));
            }
            frames.push((opcode, payload));
        }
    };
    let ended = tokio::time::timeout(READ_TIMEOUT, read).await.context("no close frame within 10 s")?;
    let (code, reason) = ended.with_context(|| format!("no close frame, after {} frames", frames.len()))?;
    Ok(Closed { frames, code, reason })
}
