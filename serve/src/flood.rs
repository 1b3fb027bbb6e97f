//! A bound on HTTP/2 control frames a client may send. hyper answers every PING
//! and acknowledges every SETTINGS it receives (one at a time, so memory stays
//! bounded, but without end): a client sending them as fast as it can keeps a
//! core busy for nothing. hyper has no option for it, so this wraps the
//! connection's socket, reads the frame headers going by, and ends the connection
//! once a client sends more PING and SETTINGS frames than a player ever would.
//! It only reads what passes; it changes no byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface, before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// How many PING and SETTINGS frames a connection may send: a burst of this many,
/// then this many more per second.
#[derive(Debug, Clone, Copy)]
pub struct ControlBudget {
    pub burst: f64,
    pub per_second: f64,
}

impl Default for ControlBudget {
    fn default() -> Self {
        // Players send a SETTINGS or two and a PING now and then.
        Self { burst: 100.0, per_second: 10.0 }
    }
}

enum Parse {
    Preface { left: usize },
    Header { have: usize, head: [u8; FRAME_HEADER_LEN] },
    Payload { left: usize },
}

/// A socket of an HTTP/2 connection, with its client's control frames counted.
pub struct FloodGuard<T> {
    inner: T,
    parse: Parse,
    budget: ControlBudget,
    tokens: f64,
    refilled: Instant,
    exceeded: bool,
}

impl<T> FloodGuard<T> {
    /// Wraps a socket whose first bytes are the client's connection preface.
    pub fn new(inner: T, budget: ControlBudget) -> Self {
        Self {
            inner,
            parse: Parse::Preface { left: PREFACE_LEN },
            budget,
            tokens: budget.burst,
            refilled: Instant::now(),
            exceeded: false,
        }
    }

    /// Counts one PING or SETTINGS at `now`; `false` once over the budget.
    fn spend(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.budget.per_second).min(self.budget.burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Follows the frames in `bytes` (the next bytes the client sent, at `now`).
    fn observe(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Preface { left } | Parse::Payload { left } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.parse = Parse::Header { have: 0, head: [0; FRAME_HEADER_LEN] };
                    }
                }
                Parse::Header { have, head } => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == FRAME_HEADER_LEN {
                        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                        let (kind, flags) = (head[3], head[4]);
                        let control = (kind == PING || kind == SETTINGS) && flags & ACK == 0;
                        if control && !self.spend(now) {
                            self.exceeded = true;
                        }
                        self.parse = if len == 0 {
                            Parse::Header { have: 0, head: [0; 9] }
                        } else {
                            Parse::Payload { left: len }
                        };
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FloodGuard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.exceeded {
            return Poll::Ready(Err(io::Error::other("too many HTTP/2 PING or SETTINGS frames")));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.observe(&buf.filled()[before..], Instant::now());
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FloodGuard<T> {
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

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn control_frames_past_the_budget_end_the_connection() {
        let budget = ControlBudget { burst: 3.0, per_second: 1.0 };
        let t0 = Instant::now();
        let mut g = FloodGuard::new((), budget);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(SETTINGS, 0, &[0; 6]));
        wire.extend(frame(SETTINGS, ACK, &[]));
        // A HEADERS frame whose payload holds bytes that look like a PING header.
        wire.extend(frame(0x1, 0x4, &frame(PING, 0, &[0; 8])));
        wire.extend(frame(PING, 0, &[0; 8]));
        wire.extend(frame(PING, ACK, &[0; 8]));
        // Fed a byte at a time: headers split across reads are followed.
        for b in &wire {
            g.observe(std::slice::from_ref(b), t0);
        }
        assert!(!g.exceeded, "1 SETTINGS and 1 PING; ACKs and payload bytes do not count");
        g.observe(&frame(PING, 0, &[0; 8]), t0);
        assert!(!g.exceeded);
        g.observe(&frame(PING, 0, &[0; 8]), t0);
        assert!(g.exceeded, "the fourth in a burst of three");
        // The budget refills with time.
        let mut g = FloodGuard::new((), budget);
        g.refilled = t0;
        g.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", t0);
        for _ in 0..3 {
            g.observe(&frame(PING, 0, &[0; 8]), t0);
        }
        let later = t0 + std::time::Duration::from_secs(2);
        g.observe(&frame(PING, 0, &[0; 8]), later);
        g.observe(&frame(PING, 0, &[0; 8]), later);
        assert!(!g.exceeded);
        g.observe(&frame(PING, 0, &[0; 8]), later);
        assert!(g.exceeded);
    }
}
