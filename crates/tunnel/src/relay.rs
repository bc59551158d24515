//! The one relay every data path uses.
//!
//! Built on [`tokio::io::copy_bidirectional_with_sizes`]: both directions are polled by
//! one future, an EOF on one side is passed on as a write shutdown (half-close, which
//! `scp`, `rsync` and `ssh host cmd < file` rely on) while the other direction keeps
//! flowing, and the first I/O error ends both. Writes are awaited before more is read,
//! so a stalled peer stalls its sender instead of growing a buffer (backpressure).

use std::future::Future;
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

/// Relays a proxied client and its runner. `pending` holds bytes the client pipelined
/// behind its request line (read already while parsing it); they reach the runner first.
/// A plain-TCP client on Linux takes [`relay_tcp`] (splice(2), no copy through user
/// space); anything else (TLS) takes [`relay`].
///
/// Returned boxed, sized for the path taken: an open tunnel keeps this future for its
/// whole life, and the splice path's state is a fraction of the generic one's.
pub fn relay_client<'a, S>(
    client: &'a mut S,
    pending: &'a [u8],
    runner: &'a mut tokio::net::TcpStream,
) -> Pin<Box<dyn Future<Output = RelayOutcome> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(target_os = "linux")]
    if (&*client as &dyn std::any::Any).is::<tokio::net::TcpStream>() {
        let any: &'a mut dyn std::any::Any = client;
        if let Some(tcp) = any.downcast_mut::<tokio::net::TcpStream>() {
            return Box::pin(relay_tcp(tcp, pending, runner));
        }
        unreachable!("checked to be a TcpStream just above");
    }
    Box::pin(relay_with_pending(client, pending, runner))
}

/// [`relay`], after writing `pending` to `b`.
async fn relay_with_pending<A>(
    a: &mut A,
    pending: &[u8],
    b: &mut tokio::net::TcpStream,
) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if let Err(e) = tokio::io::AsyncWriteExt::write_all(b, pending).await {
        return RelayOutcome {
            stats: RelayStats::default(),
            result: Err(e),
        };
    }
    let mut outcome = relay(a, b).await;
    outcome.stats.a_to_b += pending.len() as u64;
    outcome
}

/// Relays two TCP sockets with splice(2) through a pipe per direction: the bytes move
/// socket → pipe → socket inside the kernel, never copied to user space. `a_pending` is
/// sent to `b` before anything read from `a` (bytes a caller already buffered). Same
/// contract as [`relay`]: half-close passed on, first error ends both directions, byte
/// counts kept on error. Pipes are taken only while bytes are in flight and returned to
/// a small shared pool afterwards, so an idle tunnel holds no pipe and no buffer.
///
/// Both directions are plain state machines polled by one future (about a hundred
/// bytes), not two `async` blocks: an open tunnel's whole relay state is that small.
#[cfg(target_os = "linux")]
pub async fn relay_tcp(
    a: &mut tokio::net::TcpStream,
    a_pending: &[u8],
    b: &mut tokio::net::TcpStream,
) -> RelayOutcome {
    let mut up = splice::Direction::new(a_pending);
    let mut down = splice::Direction::new(&[]);
    let result = std::future::poll_fn(|cx| {
        let up_done = match up.poll(cx, a, b) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            other => other.is_ready(),
        };
        let down_done = match down.poll(cx, b, a) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            other => other.is_ready(),
        };
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    RelayOutcome {
        stats: RelayStats {
            a_to_b: up.count,
            b_to_a: down.count,
        },
        result,
    }
}

#[cfg(target_os = "linux")]
mod splice {
    //! One direction of [`super::relay_tcp`], and the pipe pool.

    use std::io;
    use std::net::Shutdown;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;
    use std::task::{ready, Context, Poll};

    use socket2::SockRef;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Most bytes one splice call moves; the pipe is sized to hold that much.
    pub const PIPE_SIZE: usize = 256 * 1024;
    /// Empty pipes kept for reuse; more are closed (each costs two descriptors).
    const POOL_MAX: usize = 64;

    static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

    /// A pipe's read and write ends. Only ever pooled when empty.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        fn take() -> io::Result<Pipe> {
            if let Some(p) = POOL.lock().ok().and_then(|mut pool| pool.pop()) {
                return Ok(p);
            }
            sys::pipe()
        }

        fn give_back(self) {
            if let Ok(mut pool) = POOL.lock() {
                if pool.len() < POOL_MAX {
                    pool.push(self);
                }
            }
        }
    }

    /// One direction, `src` → `dst`: pending bytes first, then splice until `src` reaches
    /// EOF, then a write shutdown of `dst`.
    pub struct Direction<'p> {
        /// Bytes still to write before anything read from `src`.
        pending: &'p [u8],
        /// Held only while bytes are in flight; a pipe with bytes in it is never pooled.
        pipe: Option<Pipe>,
        /// Bytes in `pipe` not yet written to `dst`.
        in_pipe: usize,
        /// Bytes written to `dst`.
        pub count: u64,
        done: bool,
    }

    impl<'p> Direction<'p> {
        pub fn new(pending: &'p [u8]) -> Self {
            Direction {
                pending,
                pipe: None,
                in_pipe: 0,
                count: 0,
                done: false,
            }
        }

        /// Moves what can be moved now. `Ready(Ok)` once `src`'s EOF was passed on (and
        /// on every call after that).
        pub fn poll(
            &mut self,
            cx: &mut Context<'_>,
            src: &TcpStream,
            dst: &TcpStream,
        ) -> Poll<io::Result<()>> {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while !self.pending.is_empty() {
                ready!(dst.poll_write_ready(cx))?;
                match dst.try_write(self.pending) {
                    Ok(n) => {
                        self.pending = &self.pending[n..];
                        self.count += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            loop {
                while self.in_pipe > 0 {
                    ready!(dst.poll_write_ready(cx))?;
                    let Some(p) = &self.pipe else {
                        unreachable!("bytes in flight without a pipe")
                    };
                    match dst.try_io(Interest::WRITABLE, || {
                        sys::splice(p.read.as_raw_fd(), dst.as_fd().as_raw_fd(), self.in_pipe)
                    }) {
                        Ok(n) => {
                            self.in_pipe -= n;
                            self.count += n as u64;
                        }
                        // Readiness was cleared; the next poll_write_ready registers us.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if self.pipe.is_none() {
                    // Wait for bytes without holding a pipe: idle tunnels cost no descriptors.
                    ready!(src.poll_read_ready(cx))?;
                    self.pipe = Some(Pipe::take()?);
                }
                let Some(p) = &self.pipe else {
                    unreachable!("a pipe was just taken")
                };
                match src.try_io(Interest::READABLE, || {
                    sys::splice(src.as_fd().as_raw_fd(), p.write.as_raw_fd(), PIPE_SIZE)
                }) {
                    Ok(0) => {
                        if let Some(p) = self.pipe.take() {
                            p.give_back();
                        }
                        self.done = true;
                        return Poll::Ready(match SockRef::from(dst).shutdown(Shutdown::Write) {
                            // The peer closed its socket already: nothing left to tell it.
                            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                            other => other,
                        });
                    }
                    Ok(n) => self.in_pipe = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Drained for now: the pipe is empty, pool it before waiting again.
                        if let Some(p) = self.pipe.take() {
                            p.give_back();
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }

    mod sys {
        //! The two system calls std and tokio do not wrap. The only `unsafe` in the crate.
        #![allow(unsafe_code)]

        use super::*;

        /// A non-blocking, close-on-exec pipe resized to [`PIPE_SIZE`] (best effort: the
        /// kernel may cap it at `/proc/sys/fs/pipe-max-size`).
        pub fn pipe() -> io::Result<Pipe> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure only leaves the default size.
            unsafe {
                libc::fcntl(
                    write.as_raw_fd(),
                    libc::F_SETPIPE_SZ,
                    PIPE_SIZE as libc::c_int,
                )
            };
            Ok(Pipe { read, write })
        }

        /// `splice(from, NULL, to, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`: bytes moved,
        /// 0 at EOF of `from`.
        pub fn splice(from: libc::c_int, to: libc::c_int, len: usize) -> io::Result<usize> {
            // SAFETY: both fds are open for the duration of the call (borrowed from owned
            // sockets/pipes by the caller); null offsets are allowed for pipes and sockets.
            let n = unsafe {
                libc::splice(
                    from,
                    std::ptr::null_mut(),
                    to,
                    std::ptr::null_mut(),
                    len,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        }
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

    /// Two connected loopback sockets.
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn splice_relay_keeps_bytes_order_half_close_and_counts() {
        let (mut client, proxy_a) = tcp_pair().await;
        let (mut proxy_b, mut runner) = tcp_pair().await;
        // The request line is read through a BufReader that also takes these bytes.
        client
            .write_all(b"REQUEST_TUNNEL 1\npipelined")
            .await
            .expect("write");
        let mut reader = tokio::io::BufReader::new(proxy_a);
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)
            .await
            .expect("line");
        assert_eq!(line, "REQUEST_TUNNEL 1\n");
        let pending = reader.buffer().to_vec();
        let mut proxy_a = reader.into_inner();
        let relay_task = tokio::spawn(async move {
            relay_client(&mut proxy_a, &pending, &mut proxy_b).await
        });

        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            let (mut r, mut w) = client.split();
            let writer = async {
                w.write_all(&up2).await?;
                w.shutdown().await
            };
            let mut got = Vec::new();
            let (wr, rd) = tokio::join!(writer, r.read_to_end(&mut got));
            wr.and(rd).map(|_| got)
        });
        // The runner sees the pipelined bytes, then the stream, then the client's FIN,
        // while its own direction is still open.
        let mut got_up = Vec::new();
        tokio::time::timeout(WAIT, runner.read_to_end(&mut got_up))
            .await
            .expect("runner saw EOF")
            .expect("read");
        assert_eq!(&got_up[..9], b"pipelined");
        assert!(got_up[9..] == up[..], "upstream bytes differ");
        runner.write_all(&down2).await.expect("write");
        runner.shutdown().await.expect("shutdown");
        let got_down = tokio::time::timeout(WAIT, client_side)
            .await
            .expect("client done")
            .expect("join")
            .expect("io");
        assert!(got_down == down, "downstream bytes differ");
        let outcome = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay done")
            .expect("join");
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert_eq!(
            outcome.stats,
            RelayStats {
                a_to_b: 3_000_009,
                b_to_a: 2_000_000
            }
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn splice_relay_ends_when_a_side_resets() {
        let (client, mut proxy_a) = tcp_pair().await;
        let (mut proxy_b, mut runner) = tcp_pair().await;
        let relay_task =
            tokio::spawn(async move { relay_tcp(&mut proxy_a, b"", &mut proxy_b).await });
        runner.write_all(b"banner").await.expect("write");
        // SO_LINGER 0: close sends RST instead of FIN.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(client);
        let outcome = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay ended")
            .expect("join");
        // The runner side is closed too (EOF or reset), never left open.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, runner.read_to_end(&mut rest))
            .await
            .expect("runner side closed");
        let _ = outcome;
    }
}
