//! A guard on the raw byte stream of a server-side WebSocket: RFC 6455
//! section 5.1 says a server must close the connection when a client frame
//! is not masked, and fastwebsockets 0.10 does not expose the mask bit. This
//! adapter follows the frame headers as bytes go by (it never copies or
//! buffers payloads) and fails the read with `InvalidData` on an unmasked
//! frame, which the socket handler answers with close code 1002.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The message of the error an unmasked frame raises.
pub const UNMASKED: &str = "unmasked client frame";

/// Wraps a stream whose reads are client frames.
#[derive(Debug)]
pub struct RequireMask<S> {
    inner: S,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a frame header: the bytes so far.
    Header { bytes: [u8; 10], have: usize },
    /// Skipping the rest of a header (mask key) and the payload.
    Skip { left: u64 },
}

const NEW_HEADER: State = State::Header { bytes: [0; 10], have: 0 };

impl<S> RequireMask<S> {
    /// Guards `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner, state: NEW_HEADER }
    }

    /// The stream, unguarded.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Follows `data` through the frame structure.
    fn scan(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Skip { left } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = NEW_HEADER;
                    }
                }
                State::Header { bytes, have } => {
                    bytes[*have] = data[0];
                    *have += 1;
                    data = &data[1..];
                    if *have < 2 {
                        continue;
                    }
                    if bytes[1] & 0x80 == 0 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, UNMASKED));
                    }
                    let extended = match bytes[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    if *have < 2 + extended {
                        continue;
                    }
                    let payload = match extended {
                        2 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
                        8 => u64::from_be_bytes([
                            bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9],
                        ]),
                        _ => u64::from(bytes[1] & 0x7f),
                    };
                    // The 4-byte masking key, then the payload.
                    self.state = State::Skip { left: payload.saturating_add(4) };
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RequireMask<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.scan(&buf.filled()[before..])?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RequireMask<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(masked: bool, len: usize) -> Vec<u8> {
        let mut out = vec![0x81];
        let bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(bit | u8::try_from(len).expect("small")),
            126..=65535 => {
                out.push(bit | 126);
                out.extend(u16::try_from(len).expect("medium").to_be_bytes());
            }
            _ => {
                out.push(bit | 127);
                out.extend((len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend([1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(b'x', len));
        out
    }

    #[test]
    fn masked_frames_pass_in_any_split() {
        let stream: Vec<u8> = [frame(true, 5), frame(true, 300), frame(true, 70_000), frame(true, 0)].concat();
        for chunk in [1, 3, 7, 64, 4096, stream.len()] {
            let mut guard = RequireMask::new(());
            for piece in stream.chunks(chunk) {
                guard.scan(piece).expect("masked frames pass");
            }
            assert!(matches!(guard.state, State::Header { have: 0, .. }), "ends on a frame boundary");
        }
    }

    #[test]
    fn an_unmasked_frame_fails_wherever_it_starts() {
        let stream: Vec<u8> = [frame(true, 200), frame(false, 3)].concat();
        let mut guard = RequireMask::new(());
        let error = stream.chunks(5).try_for_each(|piece| guard.scan(piece)).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
