//! The one relay every data path uses.
//!
//! Built on [`tokio::io::copy_bidirectional_with_sizes`]: both directions are polled by
//! one future, an EOF on one side is passed on as a write shutdown (half-close, which
//! `scp`, `rsync` and `ssh host cmd < file` rely on) while the other direction keeps
//! flowing, and the first I/O error ends both. Writes are awaited before more is read,
//! so a stalled peer stalls its sender instead of growing a buffer (backpressure).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of each direction's copy buffer.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// Bytes moved by a finished (or failed) relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes written to `b` (read from `a`).
    pub a_to_b: u64,
    /// Bytes written to `a` (read from `b`).
    pub b_to_a: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes moved in each direction, also when the relay failed.
    pub stats: RelayStats,
    /// `Err` when a side reset or another I/O error ended the relay early.
    pub result: io::Result<()>,
}

/// Relays bytes between `a` and `b` until both directions have seen EOF or either side
/// fails. Bytes already buffered in a `BufReader` passed as `a` or `b` are sent first.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a = Counted {
        inner: a,
        written: 0,
    };
    let mut b = Counted {
        inner: b,
        written: 0,
    };
    let result =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, RELAY_BUFFER, RELAY_BUFFER)
            .await
            .map(|_| ());
    RelayOutcome {
        stats: RelayStats {
            a_to_b: b.written,
            b_to_a: a.written,
        },
        result,
    }
}

/// Counts bytes accepted by `poll_write`, so totals survive an error mid-relay.
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    written: u64,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.written += n as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn moves_bytes_both_ways_and_passes_half_close() {
        let (client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut runner) = tokio::io::duplex(1024);
        let relay_task = tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b).await });

        let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let writer = async {
                w.write_all(&up2).await?;
                w.shutdown().await
            };
            let mut got = Vec::new();
            let (wr, rd) = tokio::join!(writer, r.read_to_end(&mut got));
            wr.and(rd).map(|_| got)
        });
        // The runner reads until the client's half-close arrives, then answers.
        let mut got_up = Vec::new();
        tokio::time::timeout(WAIT, runner.read_to_end(&mut got_up))
            .await
            .expect("runner saw EOF")
            .expect("read");
        assert_eq!(got_up, up);
        runner.write_all(&down2).await.expect("write");
        runner.shutdown().await.expect("shutdown");
        let got_down = tokio::time::timeout(WAIT, client_side)
            .await
            .expect("client done")
            .expect("join")
            .expect("io");
        assert_eq!(got_down, down);
        let outcome = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay done")
            .expect("join");
        assert!(outcome.result.is_ok());
        assert_eq!(
            outcome.stats,
            RelayStats {
                a_to_b: 200_000,
                b_to_a: 150_000
            }
        );
    }
}
