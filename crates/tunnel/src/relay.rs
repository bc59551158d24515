//! The one relay every data path uses.
//!
//! Both directions are polled by one future, an EOF on one side is passed on as a write
//! shutdown (half-close, which `scp`, `rsync` and `ssh host cmd < file` rely on) while
//! the other direction keeps flowing, and the first I/O error ends both. Writes finish
//! before more is read, so a stalled peer stalls its sender instead of growing a buffer
//! (backpressure).
//!
//! [`tunnel`] is the entry point for a proxied tunnel: it takes the two streams, the bytes
//! already read behind the request line and [`RelayOptions`] (the idle timeout), and picks
//! the engine itself: splice(2) when both streams are plain TCP sockets on Linux
//! ([`relay_tcp`]), else the copy engine ([`relay`]). Each stream says which it is through
//! [`Endpoint::leg`]. Both engines track idleness the same way (each direction notes its
//! progress), so an idle timeout never costs the splice path.
//!
//! No tunnel holds a buffer while it is idle: [`relay`] takes its copy buffers from a
//! small shared pool when bytes arrive and gives them back as soon as a source has
//! nothing more to read; [`relay_tcp`] moves bytes with splice(2) through pooled pipes.
//! [`ReadAhead`] gives TLS sessions large socket reads the same way.
//!
//! [`tunnel_spliced`] is the splice engine over a tunnel's own [`TunnelPipes`] instead:
//! every byte in flight then sits in a pipe the caller owns (and may keep in systemd's
//! fd store), never in the relay, so a relay can be dropped at any point and resumed
//! later, even by another process, without losing or repeating a byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Size of each copy buffer.
pub const RELAY_BUFFER: usize = 64 * 1024;
/// Idle copy buffers kept for reuse (at most 4 MiB); more are freed.
const BUFFER_POOL_MAX: usize = 64;

static BUFFERS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A [`RELAY_BUFFER`]-sized buffer from the pool, or a new one.
fn take_buffer() -> Box<[u8]> {
    BUFFERS
        .lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .unwrap_or_else(|| vec![0; RELAY_BUFFER].into_boxed_slice())
}

/// Returns a buffer to the pool (its contents are stale bytes, never read again).
fn give_back_buffer(buffer: Box<[u8]>) {
    if let Ok(mut pool) = BUFFERS.lock() {
        if pool.len() < BUFFER_POOL_MAX {
            pool.push(buffer);
        }
    }
}

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
    copy_engine(a, b, None).await
}

/// [`relay`], ended by `idle` if set.
async fn copy_engine<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Copy::default();
    let mut down = Copy::default();
    let mut turn = Turn::default();
    let mut idle = idle.map(Idle::new);
    let result = std::future::poll_fn(|cx| {
        let polled = turn.poll_both(cx, |cx, upward| {
            if upward {
                up.poll(cx, &mut *a, &mut *b)
            } else {
                down.poll(cx, &mut *b, &mut *a)
            }
        });
        if polled.is_ready() {
            return polled;
        }
        Idle::poll_option(&mut idle, cx, up.take_progress() | down.take_progress())
    })
    .await;
    let stats = RelayStats {
        a_to_b: up.count,
        b_to_a: down.count,
    };
    up.release();
    down.release();
    RelayOutcome { stats, result }
}

/// How [`tunnel`] relays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// End the tunnel with a `TimedOut` error once no byte moved either way for this
    /// long; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// Ends a relay once neither direction made progress for its timeout.
///
/// The directions only flag progress; the time is taken once per poll that saw some, and
/// the timer is re-armed only when it fires early, so a busy tunnel never touches it.
///
/// Kept on the heap (a relay holds an `Option<Box<Idle>>`, one word): a relay without an
/// idle timeout pays nothing, and an open tunnel's inline state stays small.
struct Idle {
    timeout: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Idle {
    fn new(timeout: Duration) -> Box<Self> {
        let now = Instant::now();
        Box::new(Idle {
            timeout,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
        })
    }

    /// `Ready(Err(TimedOut))` once `timeout` has passed since the last progress; never
    /// ready without an `Idle`.
    fn poll_option(
        idle: &mut Option<Box<Idle>>,
        cx: &mut Context<'_>,
        progressed: bool,
    ) -> Poll<io::Result<()>> {
        let Some(idle) = idle else {
            return Poll::Pending;
        };
        if progressed {
            idle.last = Instant::now();
        }
        loop {
            ready!(idle.sleep.as_mut().poll(cx));
            let deadline = idle.last + idle.timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("idle for {}s", idle.timeout.as_secs_f64()),
                )));
            }
            idle.sleep.as_mut().reset(deadline);
        }
    }
}

/// A stream as [`tunnel`] sees it: a plain TCP socket (which splice(2) can move bytes
/// for) or anything else.
pub enum Leg<'s> {
    /// A bare TCP socket with nothing buffered above it.
    Tcp(&'s mut TcpStream),
    /// Any other stream (TLS, a pipe, an in-memory stream).
    Other(&'s mut (dyn Duplex + 's)),
}

/// A stream both readable and writable, as the copy engine relays it.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> Duplex for T {}

/// A stream [`tunnel`] accepts. It says what it is, so the relay can pick splice(2)
/// without guessing at run time.
pub trait Endpoint: Duplex {
    /// This stream as a [`Leg`]; anything but a bare [`TcpStream`] is [`Leg::Other`].
    fn leg(&mut self) -> Leg<'_>;
}

impl Endpoint for TcpStream {
    fn leg(&mut self) -> Leg<'_> {
        Leg::Tcp(self)
    }
}

/// Streams that are never a bare TCP socket.
macro_rules! other_endpoint {
    ($($t:ty),* $(,)?) => {$(
        impl<S: AsyncRead + AsyncWrite + Unpin + Send> Endpoint for $t {
            fn leg(&mut self) -> Leg<'_> {
                Leg::Other(self)
            }
        }
    )*};
}

other_endpoint!(
    tokio_rustls::server::TlsStream<S>,
    tokio_rustls::client::TlsStream<S>,
    ReadAhead<S>,
    tokio::io::BufReader<S>,
);

impl Endpoint for tokio::io::DuplexStream {
    fn leg(&mut self) -> Leg<'_> {
        Leg::Other(self)
    }
}

/// Relays a tunnel: writes `pending` (bytes already read from `a`, such as what a client
/// pipelined behind its request line) to `b` first, then relays both ways as [`relay`]
/// does, until both sides finished, one failed, or `options.idle_timeout` passed without
/// a byte moving. `pending` counts in `a_to_b`.
///
/// Two plain TCP sockets on Linux take [`relay_tcp`] (splice(2), no copy through user
/// space); anything else (TLS) takes the copy engine. Returned boxed, sized for the path
/// taken: an open tunnel keeps this future for its whole life, and the splice path's
/// state is a fraction of the copy engine's.
pub fn tunnel<'a, A, B>(
    a: &'a mut A,
    pending: &'a [u8],
    b: &'a mut B,
    options: RelayOptions,
) -> Pin<Box<dyn Future<Output = RelayOutcome> + Send + 'a>>
where
    A: Endpoint + ?Sized,
    B: Endpoint + ?Sized,
{
    match (a.leg(), b.leg()) {
        #[cfg(target_os = "linux")]
        (Leg::Tcp(a), Leg::Tcp(b)) => Box::pin(splice_engine(a, pending, b, options)),
        (a, b) => Box::pin(copy_tunnel(a, pending, b, options)),
    }
}

/// The copy engine of [`tunnel`].
async fn copy_tunnel(
    mut a: Leg<'_>,
    pending: &[u8],
    mut b: Leg<'_>,
    options: RelayOptions,
) -> RelayOutcome {
    if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut b, pending).await {
        return RelayOutcome {
            stats: RelayStats::default(),
            result: Err(e),
        };
    }
    let mut outcome = copy_engine(&mut a, &mut b, options.idle_timeout).await;
    outcome.stats.a_to_b += pending.len() as u64;
    outcome
}

impl Leg<'_> {
    fn pinned(&mut self) -> Pin<&mut dyn Duplex> {
        match self {
            Leg::Tcp(tcp) => Pin::new(&mut **tcp),
            Leg::Other(other) => Pin::new(&mut **other),
        }
    }
}

impl AsyncRead for Leg<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().pinned().poll_read(cx, buf)
    }
}

impl AsyncWrite for Leg<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().pinned().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().pinned().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Leg::Tcp(tcp) => tcp.is_write_vectored(),
            Leg::Other(other) => other.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pinned().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pinned().poll_shutdown(cx)
    }
}

/// Which direction of a relay is polled first; it alternates on every poll.
///
/// A direction with bytes ready keeps moving them until tokio's cooperative budget for
/// the task runs out, and every I/O call after that returns `Pending`: polled always
/// second, the other direction would then move nothing while the first one streams.
#[derive(Default)]
struct Turn {
    down_first: bool,
}

impl Turn {
    /// Polls both directions (`upward` says which), first error wins; ready when both are.
    fn poll_both(
        &mut self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>, bool) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        self.down_first = !self.down_first;
        let mut done = 0;
        for upward in [!self.down_first, self.down_first] {
            match poll(cx, upward) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => done += 1,
                Poll::Pending => {}
            }
        }
        if done == 2 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction of [`relay`]: read into a pooled buffer, write it all, repeat; flush
/// whenever the source runs dry; at the source's EOF, shut the destination's write side.
#[derive(Default)]
struct Copy {
    /// Held only while bytes are in flight.
    buffer: Option<Box<[u8]>>,
    /// `buffer[pos..end]` is still to be written.
    pos: usize,
    end: usize,
    /// Bytes written to the destination.
    count: u64,
    /// Written since the last flush.
    unflushed: bool,
    /// Bytes read or written since [`take_progress`](Self::take_progress) last looked.
    progressed: bool,
    eof: bool,
    done: bool,
}

impl Copy {
    /// Whether bytes moved since the last call.
    fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progressed)
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, src: &mut R, dst: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(buffer) = &mut self.buffer {
                while self.pos < self.end {
                    match Pin::new(&mut *dst).poll_write(cx, &buffer[self.pos..self.end]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => {
                            self.pos += n;
                            self.count += n as u64;
                            self.unflushed = true;
                            self.progressed = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // While the destination is busy, fill the buffer's free space
                            // so the next write is larger (fewer, bigger writes to a slow
                            // writer such as a pipe behind tokio's blocking pool).
                            if !self.eof && self.end < buffer.len() {
                                let mut read = ReadBuf::new(&mut buffer[self.end..]);
                                match Pin::new(&mut *src).poll_read(cx, &mut read) {
                                    Poll::Ready(Ok(())) => match read.filled().len() {
                                        0 => self.eof = true,
                                        n => {
                                            self.end += n;
                                            self.progressed = true;
                                        }
                                    },
                                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                    Poll::Pending => {}
                                }
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
            if self.eof {
                if self.unflushed {
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    self.unflushed = false;
                }
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let buffer = self.buffer.get_or_insert_with(take_buffer);
            let mut read = ReadBuf::new(buffer);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    self.pos = 0;
                    self.end = n;
                    self.progressed |= n > 0;
                    if n == 0 {
                        self.eof = true;
                        self.release();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read now: the buffer goes back to the pool (an idle
                    // tunnel holds none) and what was written is flushed.
                    self.release();
                    if self.unflushed {
                        ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Gives the buffer back to the pool; only when everything in it was written.
    fn release(&mut self) {
        if self.pos == self.end {
            if let Some(buffer) = self.buffer.take() {
                give_back_buffer(buffer);
            }
        }
    }
}

/// Reads the wrapped stream in [`RELAY_BUFFER`]-sized chunks however little a caller
/// asks for, and passes writes straight through.
///
/// rustls asks its transport for at most 4 KiB per read, so a TLS session over a bare
/// socket makes four system calls per 16 KiB record; under a `ReadAhead` it makes about
/// one per 64 KiB. The buffer comes from the relay's pool when a read finds the caller's
/// buffer small, and goes back as soon as it is empty, so an idle session holds none.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buffer: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buffer: None,
            pos: 0,
            end: 0,
        }
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_back_buffer(buffer);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.end {
            if buf.remaining() >= RELAY_BUFFER {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let buffer = this.buffer.get_or_insert_with(take_buffer);
            let mut read = ReadBuf::new(buffer);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let n = read.filled().len();
            if !matches!(polled, Poll::Ready(Ok(()))) || n == 0 {
                if let Some(buffer) = this.buffer.take() {
                    give_back_buffer(buffer);
                }
                return polled;
            }
            this.pos = 0;
            this.end = n;
        }
        if let Some(buffer) = &this.buffer {
            let n = buf.remaining().min(this.end - this.pos);
            buf.put_slice(&buffer[this.pos..this.pos + n]);
            this.pos += n;
        }
        if this.pos == this.end {
            if let Some(buffer) = this.buffer.take() {
                give_back_buffer(buffer);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
/// [`tunnel`] picks this engine for two TCP sockets, with an idle timeout if asked.
#[cfg(target_os = "linux")]
pub fn relay_tcp<'a>(
    a: &'a mut TcpStream,
    a_pending: &'a [u8],
    b: &'a mut TcpStream,
) -> impl Future<Output = RelayOutcome> + Send + 'a {
    splice_engine(a, a_pending, b, RelayOptions::default())
}

/// [`relay_tcp`] with [`RelayOptions`].
#[cfg(target_os = "linux")]
async fn splice_engine(
    a: &mut TcpStream,
    a_pending: &[u8],
    b: &mut TcpStream,
    options: RelayOptions,
) -> RelayOutcome {
    let mut up = splice::Direction::new(a_pending);
    let mut down = splice::Direction::new(&[]);
    let mut turn = Turn::default();
    let mut idle = options.idle_timeout.map(Idle::new);
    let result = std::future::poll_fn(|cx| {
        let polled = turn.poll_both(cx, |cx, upward| {
            if upward {
                up.poll(cx, a, b)
            } else {
                down.poll(cx, b, a)
            }
        });
        if polled.is_ready() {
            return polled;
        }
        Idle::poll_option(&mut idle, cx, up.take_progress() | down.take_progress())
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

/// A tunnel's own splice pipes, one per direction, for [`tunnel_spliced`].
///
/// Unlike the pooled pipes of [`relay_tcp`] they are held for the tunnel's whole life
/// (four descriptors per tunnel, idle or not): bytes read from one socket and not yet
/// written to the other stay in these pipes, in the kernel, when a relay is dropped.
/// A relay started again over the same pipes (also in another process that got them
/// from systemd's fd store) writes those bytes first. After a SIGKILL, too: splice(2)
/// moves bytes socket → pipe and pipe → socket, each atomically, so at every instant a
/// byte is in exactly one place.
#[cfg(target_os = "linux")]
pub struct TunnelPipes {
    up: splice::Pipe,
    down: splice::Pipe,
    moved: RelayStats,
}

#[cfg(target_os = "linux")]
impl std::fmt::Debug for TunnelPipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelPipes")
            .field("moved", &self.moved)
            .finish_non_exhaustive()
    }
}

#[cfg(target_os = "linux")]
impl TunnelPipes {
    /// Two new non-blocking, close-on-exec pipes (sized like the pooled ones).
    pub fn new() -> io::Result<Self> {
        Ok(TunnelPipes {
            up: splice::sys::pipe()?,
            down: splice::sys::pipe()?,
            moved: RelayStats::default(),
        })
    }

    /// Pipes adopted from a previous relay: the read and write ends of the upward
    /// (`a` → `b`) and downward pipes. Made non-blocking (the engine needs that).
    pub fn from_fds(
        up_read: std::os::fd::OwnedFd,
        up_write: std::os::fd::OwnedFd,
        down_read: std::os::fd::OwnedFd,
        down_write: std::os::fd::OwnedFd,
    ) -> io::Result<Self> {
        let pipes = TunnelPipes {
            up: splice::Pipe {
                read: up_read,
                write: up_write,
            },
            down: splice::Pipe {
                read: down_read,
                write: down_write,
            },
            moved: RelayStats::default(),
        };
        for fd in pipes.fds() {
            splice::sys::set_nonblocking(fd)?;
        }
        Ok(pipes)
    }

    /// Puts `bytes` (what a client sent behind its request line, already read) into the
    /// upward pipe, ahead of everything [`tunnel_spliced`] reads from `a`. Fails with
    /// `WriteZero` if they do not all fit at once (the pipe is far larger than any
    /// request buffer).
    pub fn preload(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let n = rustix::io::write(&self.up.write, bytes)?;
        if n == bytes.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("only {n} of {} pending bytes fit in the pipe", bytes.len()),
            ))
        }
    }

    /// The four ends: up read, up write, down read, down write.
    pub fn fds(&self) -> [std::os::fd::BorrowedFd<'_>; 4] {
        use std::os::fd::AsFd;
        [
            self.up.read.as_fd(),
            self.up.write.as_fd(),
            self.down.read.as_fd(),
            self.down.write.as_fd(),
        ]
    }

    /// Bytes waiting in the (upward, downward) pipe (FIONREAD).
    pub fn buffered(&self) -> io::Result<(usize, usize)> {
        Ok((splice::sys::fill(&self.up)?, splice::sys::fill(&self.down)?))
    }

    /// Bytes [`tunnel_spliced`] wrote out of these pipes so far (it keeps this up to date
    /// while it runs, so it is right also after the relay was dropped midway).
    pub fn moved(&self) -> RelayStats {
        self.moved
    }
}

/// The splice engine over a tunnel's own `pipes` (see [`TunnelPipes`]): first writes
/// whatever the pipes hold (pending bytes put there by [`TunnelPipes::preload`], or bytes
/// a previous relay left in flight), then relays `a` ⇄ `b` as [`relay_tcp`] does, with
/// the idle timeout of `options`. Counts (also in [`TunnelPipes::moved`]) are bytes
/// written out of the pipes by this call.
///
/// Dropping the future at any point loses nothing: the bytes in flight stay in the
/// pipes. A direction whose EOF was already passed on sees EOF again when started
/// anew, and its second write shutdown is harmless.
#[cfg(target_os = "linux")]
pub async fn tunnel_spliced(
    a: &mut TcpStream,
    b: &mut TcpStream,
    pipes: &mut TunnelPipes,
    options: RelayOptions,
) -> RelayOutcome {
    {
        let TunnelPipes { up, down, moved } = pipes;
        *moved = RelayStats::default();
        let directions = splice::Direction::owned(up)
            .and_then(|up_dir| splice::Direction::owned(down).map(|down_dir| (up_dir, down_dir)));
        let (mut up, mut down) = match directions {
            Ok(directions) => directions,
            Err(e) => {
                return RelayOutcome {
                    stats: RelayStats::default(),
                    result: Err(e),
                }
            }
        };
        let mut turn = Turn::default();
        let mut idle = options.idle_timeout.map(Idle::new);
        let result = std::future::poll_fn(|cx| {
            let polled = turn.poll_both(cx, |cx, upward| {
                if upward {
                    up.poll(cx, a, b)
                } else {
                    down.poll(cx, b, a)
                }
            });
            *moved = RelayStats {
                a_to_b: up.count,
                b_to_a: down.count,
            };
            if polled.is_ready() {
                return polled;
            }
            Idle::poll_option(&mut idle, cx, up.take_progress() | down.take_progress())
        })
        .await;
        RelayOutcome {
            stats: *moved,
            result,
        }
    }
}

#[cfg(target_os = "linux")]
mod splice {
    //! One direction of [`super::relay_tcp`] and [`super::tunnel_spliced`], and the
    //! pipe pool.

    use std::io;
    use std::net::Shutdown;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
        pub(crate) read: OwnedFd,
        pub(crate) write: OwnedFd,
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

    /// The pipe a direction moves bytes through.
    enum Held<'p> {
        /// From the pool, held only while bytes are in flight; a pipe with bytes in it
        /// is never pooled.
        Pooled(Option<Pipe>),
        /// The tunnel's own, held for its whole life ([`super::TunnelPipes`]).
        Own(&'p Pipe),
    }

    impl Held<'_> {
        fn pipe(&self) -> Option<&Pipe> {
            match self {
                Held::Pooled(pipe) => pipe.as_ref(),
                Held::Own(pipe) => Some(pipe),
            }
        }

        /// Pools a pooled pipe (only ever called when it is empty).
        fn release(&mut self) {
            if let Held::Pooled(pipe) = self {
                if let Some(p) = pipe.take() {
                    p.give_back();
                }
            }
        }
    }

    /// One direction, `src` → `dst`: pending bytes first, then splice until `src` reaches
    /// EOF, then a write shutdown of `dst`.
    pub struct Direction<'p> {
        /// Bytes still to write before anything read from `src`.
        pending: &'p [u8],
        pipe: Held<'p>,
        /// Bytes in the pipe not yet written to `dst`.
        in_pipe: usize,
        /// Bytes written to `dst`.
        pub count: u64,
        /// Bytes moved since [`take_progress`](Self::take_progress) last looked.
        progressed: bool,
        done: bool,
    }

    impl<'p> Direction<'p> {
        pub fn new(pending: &'p [u8]) -> Self {
            Direction {
                pending,
                pipe: Held::Pooled(None),
                in_pipe: 0,
                count: 0,
                progressed: false,
                done: false,
            }
        }

        /// A direction through the tunnel's own `pipe`, starting with what it holds.
        pub fn owned(pipe: &'p Pipe) -> io::Result<Self> {
            Ok(Direction {
                pending: &[],
                in_pipe: sys::fill(pipe)?,
                pipe: Held::Own(pipe),
                count: 0,
                progressed: false,
                done: false,
            })
        }

        /// Whether bytes moved since the last call (what the idle timeout watches).
        pub fn take_progress(&mut self) -> bool {
            std::mem::take(&mut self.progressed)
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
                        self.progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            loop {
                while self.in_pipe > 0 {
                    ready!(dst.poll_write_ready(cx))?;
                    let Some(p) = self.pipe.pipe() else {
                        unreachable!("bytes in flight without a pipe")
                    };
                    match dst.try_io(Interest::WRITABLE, || {
                        sys::splice(p.read.as_fd(), dst.as_fd(), self.in_pipe)
                    }) {
                        Ok(n) => {
                            self.in_pipe -= n;
                            self.count += n as u64;
                            self.progressed = true;
                        }
                        // Readiness was cleared; the next poll_write_ready registers us.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if let Held::Pooled(pipe @ None) = &mut self.pipe {
                    // Wait for bytes without holding a pipe: idle tunnels cost no descriptors.
                    ready!(src.poll_read_ready(cx))?;
                    *pipe = Some(Pipe::take()?);
                }
                let Some(p) = self.pipe.pipe() else {
                    unreachable!("a pipe was just taken")
                };
                match src.try_io(Interest::READABLE, || {
                    sys::splice(src.as_fd(), p.write.as_fd(), PIPE_SIZE)
                }) {
                    Ok(0) => {
                        self.pipe.release();
                        self.done = true;
                        return Poll::Ready(match SockRef::from(dst).shutdown(Shutdown::Write) {
                            // The peer closed its socket already (or this is a restarted
                            // relay passing the same EOF on again): nothing to tell it.
                            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                            other => other,
                        });
                    }
                    Ok(n) => {
                        self.in_pipe = n;
                        self.progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.pipe {
                        // Drained for now: the pipe is empty, pool it before waiting again.
                        Held::Pooled(_) => self.pipe.release(),
                        // Our own pipe stays; wait for the socket (registers the waker).
                        Held::Own(_) => ready!(src.poll_read_ready(cx))?,
                    },
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }

    pub(super) mod sys {
        //! The pipe and splice(2) calls std and tokio do not wrap, through rustix's safe
        //! wrappers.

        use super::*;
        use rustix::pipe::{PipeFlags, SpliceFlags};

        /// A non-blocking, close-on-exec pipe resized to [`PIPE_SIZE`] (best effort: the
        /// kernel may cap it at `/proc/sys/fs/pipe-max-size`).
        pub fn pipe() -> io::Result<Pipe> {
            let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
            // Failure only leaves the default size.
            let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
            Ok(Pipe { read, write })
        }

        /// Bytes waiting in `pipe` (FIONREAD on its read end).
        pub fn fill(pipe: &Pipe) -> io::Result<usize> {
            let n = rustix::io::ioctl_fionread(&pipe.read)?;
            usize::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
        }

        /// Sets `O_NONBLOCK` on an adopted pipe end.
        pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
            let flags = rustix::fs::fcntl_getfl(fd)?;
            if !flags.contains(rustix::fs::OFlags::NONBLOCK) {
                rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
            }
            Ok(())
        }

        /// `splice(from, NULL, to, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`: bytes moved,
        /// 0 at EOF of `from`.
        pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    /// The client of a relay test: sends `bytes` and half-closes while reading what
    /// comes back until EOF.
    async fn send_all_then_read_all<S>(stream: S, bytes: Vec<u8>) -> io::Result<Vec<u8>>
    where
        S: AsyncRead + AsyncWrite,
    {
        let (mut r, mut w) = tokio::io::split(stream);
        let writer = async {
            w.write_all(&bytes).await?;
            w.shutdown().await
        };
        let mut got = Vec::new();
        let (wr, rd) = tokio::join!(writer, r.read_to_end(&mut got));
        wr.and(rd).map(|_| got)
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_and_passes_half_close() {
        let (client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut runner) = tokio::io::duplex(1024);
        let relay_task = tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b).await });

        let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
        let client_side = tokio::spawn(send_all_then_read_all(client, up.clone()));
        // The runner reads until the client's half-close arrives, then answers.
        let mut got_up = Vec::new();
        tokio::time::timeout(WAIT, runner.read_to_end(&mut got_up))
            .await
            .expect("runner saw EOF")
            .expect("read");
        assert_eq!(got_up, up);
        runner.write_all(&down).await.expect("write");
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

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut src_peer, mut src) = tokio::io::duplex(256 * 1024);
        let (mut dst, mut dst_peer) = tokio::io::duplex(256 * 1024);
        let mut copy = Copy::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        src_peer.write_all(&[7u8; 100_000]).await.expect("write");
        // Everything available is moved, then the source is dry: Pending, no buffer.
        assert!(copy.poll(&mut cx, &mut src, &mut dst).is_pending());
        assert!(copy.buffer.is_none());
        assert_eq!(copy.count, 100_000);
        let mut got = vec![0u8; 100_000];
        dst_peer.read_exact(&mut got).await.expect("read");
        assert!(got.iter().all(|b| *b == 7));
        // A destination that stops reading keeps the unwritten bytes (and their buffer).
        src_peer.write_all(&[8u8; 200_000]).await.expect("write");
        let (mut small, _small_peer) = tokio::io::duplex(1024);
        assert!(copy.poll(&mut cx, &mut src, &mut small).is_pending());
        assert!(copy.buffer.is_some() && copy.pos < copy.end);
        // EOF: passed on, and the buffer released.
        let mut copy = Copy::default();
        drop(src_peer);
        let (mut empty_src_peer, mut empty_src) = tokio::io::duplex(64);
        empty_src_peer.shutdown().await.expect("shutdown");
        assert!(matches!(
            copy.poll(&mut cx, &mut empty_src, &mut dst),
            Poll::Ready(Ok(()))
        ));
        assert!(copy.buffer.is_none());
        let mut rest = Vec::new();
        dst_peer
            .read_to_end(&mut rest)
            .await
            .expect("EOF passed on");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn read_ahead_returns_every_byte_in_order_to_small_reads() {
        let (mut writer, reader) = tokio::io::duplex(512 * 1024);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        writer.write_all(&data).await.expect("write");
        drop(writer);
        let mut reader = ReadAhead::new(reader);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, reader.read(&mut chunk))
                .await
                .expect("read in time")
                .expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == data, "bytes differ");
        // Drained: the buffer went back to the pool.
        assert!(reader.buffer.is_none());
        // Writes pass straight through.
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = ReadAhead::new(a);
        a.write_all(b"through").await.expect("write");
        let mut seen = [0u8; 7];
        b.read_exact(&mut seen).await.expect("read");
        assert_eq!(&seen, b"through");
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
            tunnel(
                &mut proxy_a,
                &pending,
                &mut proxy_b,
                RelayOptions::default(),
            )
            .await
        });

        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let client_side = tokio::spawn(send_all_then_read_all(client, up.clone()));
        // The runner sees the pipelined bytes, then the stream, then the client's FIN,
        // while its own direction is still open.
        let mut got_up = Vec::new();
        tokio::time::timeout(WAIT, runner.read_to_end(&mut got_up))
            .await
            .expect("runner saw EOF")
            .expect("read");
        assert_eq!(&got_up[..9], b"pipelined");
        assert!(got_up[9..] == up[..], "upstream bytes differ");
        runner.write_all(&down).await.expect("write");
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

    /// A relay over the tunnel's own pipes, dropped midway and started again over the
    /// same pipes taken apart and put back together (as the next process adopts them from
    /// the fd store): every byte arrives once and in order, counts add up, and the EOF
    /// already passed on in one direction is passed on again harmlessly.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn spliced_tunnel_resumes_over_its_own_pipes() {
        use std::os::fd::OwnedFd;
        let (client, mut proxy_a) = tcp_pair().await;
        let (mut proxy_b, runner) = tcp_pair().await;
        let mut pipes = TunnelPipes::new().expect("pipes");
        pipes.preload(b"pipelined").expect("preload");
        assert_eq!(pipes.buffered().expect("fill"), (9, 0));
        let up: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client_r, mut client_w) = client.into_split();
        let (mut runner_r, mut runner_w) = runner.into_split();
        // The runner answers at once and closes its side: that direction's EOF is passed
        // on before the relay is dropped.
        runner_w.write_all(b"banner").await.expect("write");
        runner_w.shutdown().await.expect("shutdown");
        // The second half is written (and the client's side closed) only once the first
        // relay is gone, so that relay cannot finish on its own.
        let (second_half, go) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let up = up.clone();
            tokio::spawn(async move {
                client_w
                    .write_all(&up[..2_000_000])
                    .await
                    .expect("write up");
                let _ = go.await;
                client_w
                    .write_all(&up[2_000_000..])
                    .await
                    .expect("write up");
                client_w.shutdown().await.expect("shutdown");
                client_w
            })
        };
        // Stop the first relay once the runner has read 1 MB, while the rest is in flight.
        let mut got = vec![0u8; 1_000_009];
        let first = {
            let relayed = tunnel_spliced(
                &mut proxy_a,
                &mut proxy_b,
                &mut pipes,
                RelayOptions::default(),
            );
            let reading = runner_r.read_exact(&mut got);
            tokio::pin!(relayed);
            tokio::select! {
                read = reading => { read.expect("read"); None }
                outcome = &mut relayed => Some(outcome),
            }
        };
        assert!(first.is_none(), "relay ended early: {first:?}");
        let moved = pipes.moved();
        assert!(moved.a_to_b >= 1_000_009, "{moved:?}");
        let mut banner = [0u8; 6];
        tokio::time::timeout(WAIT, client_r.read_exact(&mut banner))
            .await
            .expect("banner in time")
            .expect("read");
        assert_eq!(&banner, b"banner");
        // Taken apart and adopted again, as after a restart.
        let [ur, uw, dr, dw] = pipes.fds().map(|fd| fd.try_clone_to_owned().expect("dup"));
        drop(pipes);
        let mut pipes = TunnelPipes::from_fds(ur, uw, dr, dw).expect("adopt");
        let _ = second_half.send(());
        let relay_task = tokio::spawn(async move {
            let outcome = tunnel_spliced(
                &mut proxy_a,
                &mut proxy_b,
                &mut pipes,
                RelayOptions::default(),
            )
            .await;
            (outcome, OwnedFd::from(proxy_a.into_std().expect("std")))
        });
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, runner_r.read_to_end(&mut rest))
            .await
            .expect("runner saw EOF")
            .expect("read");
        got.extend_from_slice(&rest);
        assert_eq!(&got[..9], b"pipelined");
        assert!(got[9..] == up[..], "upstream bytes differ");
        let (outcome, _) = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay done")
            .expect("join");
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert_eq!(moved.a_to_b + outcome.stats.a_to_b, 4_000_009);
        assert_eq!(moved.b_to_a + outcome.stats.b_to_a, 6);
        // The client sees the runner's EOF (passed on twice) and nothing more.
        let mut tail = Vec::new();
        tokio::time::timeout(WAIT, client_r.read_to_end(&mut tail))
            .await
            .expect("client saw EOF")
            .expect("read");
        assert!(tail.is_empty());
        let _ = writer.await;
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn spliced_tunnel_closes_after_the_idle_timeout() {
        let (mut client, mut proxy_a) = tcp_pair().await;
        let (mut proxy_b, mut runner) = tcp_pair().await;
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        let relay_task = tokio::spawn(async move {
            let options = RelayOptions {
                idle_timeout: Some(idle),
            };
            tunnel(&mut proxy_a, b"hi", &mut proxy_b, options).await
        });
        let mut hi = [0u8; 2];
        tokio::time::timeout(WAIT, runner.read_exact(&mut hi))
            .await
            .expect("pending bytes in time")
            .expect("read");
        assert_eq!(&hi, b"hi");
        let outcome = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay ended by the idle timeout")
            .expect("join");
        assert!(
            started.elapsed() >= idle,
            "ended after {:?}",
            started.elapsed()
        );
        let err = outcome.result.expect_err("idle timeout is an error");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "idle for 0.3s");
        assert_eq!(
            outcome.stats,
            RelayStats {
                a_to_b: 2,
                b_to_a: 0
            }
        );
        // Both sockets were closed with the relay.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
            .await
            .expect("client side closed");
        assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn spliced_tunnel_stays_open_while_bytes_flow() {
        let (mut client, mut proxy_a) = tcp_pair().await;
        let (mut proxy_b, mut runner) = tcp_pair().await;
        let idle = Duration::from_millis(600);
        let relay_task = tokio::spawn(async move {
            let options = RelayOptions {
                idle_timeout: Some(idle),
            };
            tunnel(&mut proxy_a, b"", &mut proxy_b, options).await
        });
        // A byte each way every idle/6, for three idle timeouts: the tunnel never idles.
        let started = Instant::now();
        let mut pace = tokio::time::interval(idle / 6);
        let mut rounds = 0u64;
        while started.elapsed() < 3 * idle {
            pace.tick().await;
            let mut byte = [0u8; 1];
            client.write_all(b"u").await.expect("write up");
            tokio::time::timeout(WAIT, runner.read_exact(&mut byte))
                .await
                .expect("up in time")
                .expect("read up");
            runner.write_all(b"d").await.expect("write down");
            tokio::time::timeout(WAIT, client.read_exact(&mut byte))
                .await
                .expect("down in time")
                .expect("read down");
            assert_eq!(&byte, b"d");
            rounds += 1;
        }
        assert!(
            !relay_task.is_finished(),
            "tunnel closed while bytes flowed"
        );
        // Then it ends normally when both sides close.
        client.shutdown().await.expect("shutdown");
        runner.shutdown().await.expect("shutdown");
        let outcome = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay ended")
            .expect("join");
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert_eq!(
            outcome.stats,
            RelayStats {
                a_to_b: rounds,
                b_to_a: rounds
            }
        );
    }

    #[tokio::test]
    async fn copied_tunnel_closes_after_the_idle_timeout() {
        let (_client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut runner) = tokio::io::duplex(1024);
        let idle = Duration::from_millis(200);
        let relay_task = tokio::spawn(async move {
            let options = RelayOptions {
                idle_timeout: Some(idle),
            };
            tunnel(&mut proxy_a, b"hi", &mut proxy_b, options).await
        });
        let mut hi = [0u8; 2];
        tokio::time::timeout(WAIT, runner.read_exact(&mut hi))
            .await
            .expect("pending bytes in time")
            .expect("read");
        let outcome = tokio::time::timeout(WAIT, relay_task)
            .await
            .expect("relay ended by the idle timeout")
            .expect("join");
        let err = outcome.result.expect_err("idle timeout is an error");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            outcome.stats,
            RelayStats {
                a_to_b: 2,
                b_to_a: 0
            }
        );
    }
}
