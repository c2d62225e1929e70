//! A socket's writer, for either transport: its queue ([`Mailbox`]) into its
//! connection, everything queued at once, until the socket is asked to close
//! (then its last words: a close frame, or an event stream's `close` event)
//! or a write fails.
//!
//! The transports differ only in how a frame looks on the wire
//! ([`Framing`]): WebSocket frames ([`crate::ws`]) or `data:` lines
//! ([`crate::sse`]). Both take the connection from hyper once their HTTP
//! exchange is over ([`crate::takeover`]) and write it themselves, so that a
//! batch of frames is one buffer and one `write` call. A WebSocket's writer
//! is a task of its own ([`write_loop`]); an event stream's is part of its
//! one task.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::mailbox::{CloseReason, Mailbox, Outbound, close};
use crate::metrics;

/// The most bytes of queued frames one write takes.
const BATCH_BYTES: usize = 64 * 1024;

/// How long a socket's last words may take to go out; a peer that does not
/// take them in time (it stopped reading) gets its connection dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a transport puts what a socket is sent on the wire.
pub(crate) trait Framing {
    /// The bytes one ping takes, to tell a write of pings alone.
    const PING_BYTES: usize;
    /// Whether a write counts as hearing from the client. A WebSocket
    /// client answers pings; an event stream's client sends nothing back,
    /// so its taking what is written is all its liveness can mean.
    const WRITES_ARE_HEARD: bool;

    /// Appends one queued frame to `batch`.
    fn frame(batch: &mut Vec<u8>, outbound: Outbound);

    /// Appends the last words: what tells the client why the socket closes.
    fn close(batch: &mut Vec<u8>, reason: CloseReason);
}

/// The write side of a socket's connection, with the buffer its frames go
/// out through.
///
/// The buffer is kept from write to write so that a delivery allocates
/// nothing, and given back after a burst grew it or when a ping round finds
/// that nothing else was written since the last one, so that quiet sockets
/// hold none.
#[derive(Debug)]
pub(crate) struct Writer<F> {
    out: OwnedWriteHalf,
    batch: Vec<u8>,
    /// Whether anything but pings went out since the last ping.
    busy: bool,
    framing: std::marker::PhantomData<F>,
}

impl<F: Framing> Writer<F> {
    pub(crate) fn new(out: OwnedWriteHalf) -> Self {
        Self { out, batch: Vec::new(), busy: false, framing: std::marker::PhantomData }
    }

    /// Writes everything queued (up to [`BATCH_BYTES`]); `false` when the
    /// socket is done (see [`write_batch`]).
    pub(crate) async fn write_queued(&mut self, mailbox: &Mailbox) -> bool {
        self.batch.clear();
        let mut pings = 0;
        mailbox.take(BATCH_BYTES, |outbound| {
            pings += usize::from(matches!(outbound, Outbound::Ping));
            F::frame(&mut self.batch, outbound);
        });
        if self.batch.is_empty() {
            return true;
        }
        if !write_batch(&mut self.out, &self.batch, mailbox).await {
            return false;
        }
        if F::WRITES_ARE_HEARD {
            mailbox.heard();
        }
        metrics::bytes_out(self.batch.len());
        let only_pings = pings > 0 && self.batch.len() == pings * F::PING_BYTES;
        if only_pings && !std::mem::take(&mut self.busy) {
            self.batch = Vec::new();
            mailbox.release_if_empty();
        } else {
            self.busy |= !only_pings;
        }
        if self.batch.capacity() > BATCH_BYTES {
            self.batch = Vec::new();
        }
        true
    }

    /// Writes the socket's last words, for at most [`CLOSE_TIMEOUT`].
    pub(crate) async fn last_words(&mut self, reason: CloseReason) {
        let mut batch = Vec::new();
        F::close(&mut batch, reason);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.out.write_all(&batch)).await;
    }
}

/// A writer task: writes the socket's queue until the socket closes, then
/// its last words. What only a closing socket needs (the last words'
/// timeout) is boxed: it would otherwise size every socket's writer.
pub(crate) async fn write_loop<F: Framing>(mut writer: Writer<F>, mailbox: Mailbox) {
    loop {
        tokio::select! {
            biased;
            reason = mailbox.closed() => {
                Box::pin(writer.last_words(reason)).await;
                return;
            }
            () = mailbox.queued() => {}
        }
        if !writer.write_queued(&mailbox).await {
            return;
        }
    }
}

/// Writes `batch` whole; `false` when the socket is done: a write failed, or
/// the socket must close and the peer did not take the rest within
/// [`CLOSE_TIMEOUT`] (a peer that stopped reading; the frame is cut short,
/// so no last words can follow).
async fn write_batch(out: &mut OwnedWriteHalf, batch: &[u8], mailbox: &Mailbox) -> bool {
    let mut written = 0;
    while written < batch.len() {
        let wrote = tokio::select! {
            biased;
            wrote = out.write(&batch[written..]) => wrote,
            _ = mailbox.closed() => {
                let rest = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, out.write_all(&batch[written..]))).await;
                return matches!(rest, Ok(Ok(())));
            }
        };
        match wrote {
            Ok(n) if n > 0 => written += n,
            _ => {
                mailbox.close(CloseReason { code: close::NORMAL, text: "" });
                return false;
            }
        }
    }
    true
}
