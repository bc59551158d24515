//! The idle timeout (`idle_timeout_secs`): a relay that ends when no byte moved either
//! way for a while, by stamping the time of the last byte read from or written to the
//! client.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hakuriver_tunnel::relay::{self, RelayOutcome, RelayStats};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// [`relay::relay_with_pending`], ended when no byte moved either way for `idle`.
pub(crate) async fn relay_until_idle<S>(
    client: &mut S,
    pending: &[u8],
    runner: &mut TcpStream,
    idle: Duration,
) -> RelayOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let mut watched = Watched {
        inner: client,
        started,
        last: &last,
        up: pending.len() as u64,
        down: 0,
    };
    let finished = {
        let relayed = relay::relay_with_pending(&mut watched, pending, runner);
        tokio::pin!(relayed);
        let mut deadline = started + idle;
        loop {
            tokio::select! {
                outcome = &mut relayed => break Some(outcome),
                () = tokio::time::sleep_until(deadline.into()) => {
                    let active = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                    if active <= Instant::now() {
                        break None;
                    }
                    deadline = active;
                }
            }
        }
    };
    if let Some(outcome) = finished {
        return outcome;
    }
    RelayOutcome {
        stats: RelayStats {
            a_to_b: watched.up,
            b_to_a: watched.down,
        },
        result: Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {}s", idle.as_secs_f64()),
        )),
    }
}

/// Stamps the time of the last byte read from or written to the client, and counts them.
struct Watched<'a, S> {
    inner: &'a mut S,
    started: Instant,
    last: &'a AtomicU64,
    up: u64,
    down: u64,
}

impl<S> Watched<'_, S> {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.up += n as u64;
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = poll {
            if n > 0 {
                self.down += n as u64;
                self.touch();
            }
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
