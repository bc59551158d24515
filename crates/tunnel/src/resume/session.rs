//! One end of a resumable tunnel: the local stream (the runner's sshd on the host, ssh
//! on the client) on one side, the current connection to the other end (the *leg*) on
//! the other, and what survives the leg: the bytes the peer has not acknowledged yet and
//! the counts both sides resume from.
//!
//! [`Session::run`] relays until the tunnel is finished, the local stream fails, the
//! peer aborts, or the leg is lost (an I/O error, EOF, or nothing heard from the peer
//! for [`SessionConfig::dead_after`]). After a lost leg the session keeps its state:
//! the owner gets a new leg (the client reconnects, the host waits for a RESUME),
//! exchanges counts, calls [`Session::resume_from`] with what the peer said it has,
//! and runs again. Nothing is lost, repeated or reordered: each side keeps every byte
//! it read from its local stream until the peer acknowledges having passed it on, and
//! acknowledges only bytes it passed on itself.
//!
//! Memory is bounded per direction: at most [`SessionConfig::window`] unacknowledged
//! bytes are kept, and a full window stops reading from the local stream
//! (backpressure); a local stream that does not take bytes stops reading from the leg.
//! An idle session holds no buffer: read and write buffers are taken while bytes move
//! and dropped when they are consumed.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::frame::{self, Control, Parsed};
use super::wire::{ResumeKey, TunnelId};

/// Default bound on unacknowledged bytes kept per direction.
pub const DEFAULT_WINDOW: usize = 1024 * 1024;
/// Default time the host keeps a tunnel whose connection dropped.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Default interval of PINGs on an otherwise quiet leg.
pub const DEFAULT_PING_EVERY: Duration = Duration::from_secs(15);
/// Default silence after which a leg counts as lost.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(45);

/// Size of a local read and of the leg's read buffer.
const IO_CHUNK: usize = 64 * 1024;

/// How a session relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Most unacknowledged bytes kept (and so in flight) per direction.
    pub window: usize,
    /// A PING goes out after this long without sending anything.
    pub ping_every: Duration,
    /// The leg counts as lost after this long without hearing from the peer.
    pub dead_after: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: DEFAULT_WINDOW,
            ping_every: DEFAULT_PING_EVERY,
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }
}

/// Why [`Session::run`] returned.
#[derive(Debug)]
pub enum Ended {
    /// Both directions ended and both ends know it: the tunnel is over.
    Finished,
    /// The leg failed; the session can resume on a new one.
    LegLost(io::Error),
    /// The local stream failed (the tunnel is over; tell the peer with [`Session::abort`]).
    Local(io::Error),
    /// The peer ended the tunnel, for this reason.
    PeerAborted(String),
    /// The peer broke the framing or the counts; the tunnel cannot go on.
    Protocol(String),
}

/// The bytes read from the local stream that the peer has not acknowledged.
#[derive(Debug, Default)]
struct Outbound {
    /// From offset `acked` on, in order.
    chunks: VecDeque<Bytes>,
    /// Stream offset of the first byte in `chunks`: everything before it is acknowledged.
    acked: u64,
    /// Bytes in `chunks`.
    buffered: usize,
    /// Offset up to which bytes went into frames on the current leg.
    sent: u64,
    /// Where the next local read lands (shares its allocation with recent chunks).
    tail: BytesMut,
    /// The local stream reached EOF (after `read_total()` bytes).
    local_eof: bool,
    /// FIN went out on the current leg.
    fin_sent: bool,
    /// The peer acknowledged our EOF.
    fin_acked: bool,
}

impl Outbound {
    fn read_total(&self) -> u64 {
        self.acked + self.buffered as u64
    }

    /// Drops everything before `offset` (which the peer has).
    fn ack_to(&mut self, offset: u64) {
        while self.acked < offset {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let want = usize::try_from(offset - self.acked).unwrap_or(usize::MAX);
            if front.len() <= want {
                self.acked += front.len() as u64;
                self.buffered -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(want);
                self.acked += want as u64;
                self.buffered -= want;
            }
        }
        if self.sent < self.acked {
            self.sent = self.acked;
        }
    }

    /// Up to `max` bytes from offset `sent` on.
    fn unsent(&self, max: usize) -> Option<&[u8]> {
        let mut skip = usize::try_from(self.sent - self.acked).ok()?;
        for chunk in &self.chunks {
            if skip < chunk.len() {
                let end = chunk.len().min(skip + max);
                return Some(&chunk[skip..end]);
            }
            skip -= chunk.len();
        }
        None
    }
}

/// The bytes coming from the peer.
#[derive(Debug, Default)]
struct Inbound {
    /// Bytes passed on to the local stream.
    delivered: u64,
    /// What our last ACK said.
    ack_sent: u64,
    /// Our last ACK said EOF was passed on too.
    eof_ack_sent: bool,
    /// Payload bytes of the current DATA frame not yet taken from the leg.
    data_left: u32,
    /// Where the peer's stream ends, once its FIN arrived.
    peer_fin: Option<u64>,
    /// The local stream's write side was shut down (the peer's EOF passed on).
    shutdown_done: bool,
    /// Bytes were written to the local stream since its last flush.
    unflushed: bool,
    /// The last read from the leg found nothing: acknowledge what we have now.
    leg_quiet: bool,
}

/// The resumable end of one tunnel.
pub struct Session {
    /// The tunnel's id.
    pub id: TunnelId,
    key: ResumeKey,
    /// Resumes accepted so far (the next RESUME must carry `generation + 1`).
    pub generation: u64,
    config: SessionConfig,
    out: Outbound,
    inb: Inbound,
    /// Encoded frames not yet written to the leg, from `wpos` on.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Bytes read from the leg, `rpos..rend` not yet consumed.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Sending an ABORT instead of anything else.
    abort: Option<String>,
    timers: Option<Box<Timers>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.out;
        let i = &self.inb;
        write!(
            f,
            "Session {{ id: {}, generation: {}, out: acked {} sent {} read {} eof {} fin_sent {} fin_acked {}, \
             in: delivered {} ack_sent {} eof_ack_sent {} data_left {} peer_fin {:?} shutdown {} unflushed {} quiet {}, \
             wbuf {}/{}, rbuf {}..{} of {} }}",
            self.id, self.generation, o.acked, o.sent, o.read_total(), o.local_eof, o.fin_sent,
            o.fin_acked, i.delivered, i.ack_sent, i.eof_ack_sent, i.data_left, i.peer_fin,
            i.shutdown_done, i.unflushed, i.leg_quiet, self.wpos, self.wbuf.len(), self.rpos,
            self.rend, self.rbuf.len()
        )
    }
}

/// The liveness clocks of one leg.
#[derive(Debug)]
struct Timers {
    last_rx: Instant,
    last_tx: Instant,
    sleep: Pin<Box<Sleep>>,
}

/// Counts for a log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes read from the local stream (sent or to be sent to the peer).
    pub sent: u64,
    /// Bytes from the peer passed on to the local stream.
    pub received: u64,
}

/// A resume that cannot continue the stream: the peer claims bytes we never sent, or
/// bytes we no longer hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the peer has {claimed} bytes, but this end holds {acked}..{total}")]
pub struct Mismatch {
    /// What the peer said it has.
    pub claimed: u64,
    /// The oldest byte this end still holds.
    pub acked: u64,
    /// Bytes this end has read in all.
    pub total: u64,
}

impl Session {
    /// A new session (nothing sent or received yet).
    pub fn new(id: TunnelId, key: ResumeKey, config: SessionConfig) -> Self {
        Session {
            id,
            key,
            generation: 0,
            config,
            out: Outbound::default(),
            inb: Inbound::default(),
            wbuf: Vec::new(),
            wpos: 0,
            rbuf: Vec::new(),
            rpos: 0,
            rend: 0,
            abort: None,
            timers: None,
        }
    }

    /// The resume key (to sign or check a RESUME).
    pub fn key(&self) -> &ResumeKey {
        &self.key
    }

    /// The settings.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// Bytes from the peer passed on so far: what a resume tells the peer.
    pub fn received(&self) -> u64 {
        self.inb.delivered
    }

    /// Bytes moved each way so far.
    pub fn progress(&self) -> Progress {
        Progress {
            sent: self.out.read_total(),
            received: self.inb.delivered,
        }
    }

    /// Unacknowledged bytes held now (what a resume may replay).
    pub fn held(&self) -> usize {
        self.out.buffered
    }

    /// Whether everything is done but the peer's last acknowledgement: a resume refused
    /// as unknown then only means the other end finished first.
    pub fn all_but_closed(&self) -> bool {
        self.out.local_eof
            && self.out.buffered == 0
            && self.inb.shutdown_done
            && self.inb.peer_fin.is_some()
    }

    /// Continues on a new leg, from `peer_received` (the peer's count of our bytes).
    /// Returns how many bytes will be sent again (they were sent on the lost leg but
    /// never acknowledged).
    pub fn resume_from(&mut self, peer_received: u64) -> Result<u64, Mismatch> {
        let total = self.out.read_total();
        if peer_received < self.out.acked || peer_received > total {
            return Err(Mismatch {
                claimed: peer_received,
                acked: self.out.acked,
                total,
            });
        }
        let replayed = self.out.sent.saturating_sub(peer_received);
        self.out.ack_to(peer_received);
        self.out.sent = peer_received;
        self.out.fin_sent = self.out.fin_acked;
        // The peer resends from our count; half-read frames of the old leg are void.
        self.inb.data_left = 0;
        self.inb.ack_sent = self.inb.delivered;
        self.inb.eof_ack_sent = false;
        self.rbuf = Vec::new();
        self.rpos = 0;
        self.rend = 0;
        self.wbuf = Vec::new();
        self.wpos = 0;
        self.timers = None;
        Ok(replayed)
    }

    /// Relays between `local` and `leg` until the tunnel ends or the leg is lost.
    pub fn run<'a, L, R>(
        &'a mut self,
        local: &'a mut L,
        leg: &'a mut R,
    ) -> impl Future<Output = Ended> + Send + 'a
    where
        L: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
        R: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
    {
        std::future::poll_fn(move |cx| self.poll_run(cx, local, leg))
    }

    /// Sends an ABORT with `reason` on `leg` (best effort, bounded by `timeout`).
    pub async fn abort<R>(&mut self, leg: &mut R, reason: &str, timeout: Duration)
    where
        R: AsyncWrite + Unpin + ?Sized,
    {
        use tokio::io::AsyncWriteExt;
        let mut buf = Vec::new();
        frame::push_control(&mut buf, &Control::Abort(reason.to_owned()));
        let _ = tokio::time::timeout(timeout, async {
            leg.write_all(&buf).await?;
            leg.flush().await?;
            leg.shutdown().await
        })
        .await;
    }

    fn poll_run<L, R>(&mut self, cx: &mut Context<'_>, local: &mut L, leg: &mut R) -> Poll<Ended>
    where
        L: AsyncRead + AsyncWrite + Unpin + ?Sized,
        R: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        if self.timers.is_none() {
            let now = Instant::now();
            self.timers = Some(Box::new(Timers {
                last_rx: now,
                last_tx: now,
                sleep: Box::pin(tokio::time::sleep_until(now + self.config.ping_every)),
            }));
        }
        loop {
            let mut progressed = false;
            match self.poll_inbound(cx, local, leg) {
                Poll::Ready(Ok(moved)) => progressed |= moved,
                Poll::Ready(Err(ended)) => return Poll::Ready(ended),
                Poll::Pending => {}
            }
            match self.poll_read_local(cx, local) {
                Ok(moved) => progressed |= moved,
                Err(ended) => return Poll::Ready(ended),
            }
            match self.poll_write_leg(cx, leg) {
                Ok(moved) => progressed |= moved,
                Err(ended) => return Poll::Ready(ended),
            }
            if self.finished() {
                // Our last ACK is written; a clean close tells the peer nothing more comes.
                let _ = Pin::new(&mut *leg).poll_shutdown(cx);
                return Poll::Ready(Ended::Finished);
            }
            if !progressed {
                break;
            }
        }
        match self.poll_timers(cx) {
            Poll::Ready(ended) => Poll::Ready(ended),
            Poll::Pending => Poll::Pending,
        }
    }

    fn finished(&self) -> bool {
        self.out.local_eof
            && self.out.fin_acked
            && self.inb.shutdown_done
            && self.inb.eof_ack_sent
            && self.wpos == self.wbuf.len()
            && self.abort.is_none()
    }

    /// Reads frames from the leg and passes DATA on to `local`. `Ok(true)` when
    /// something moved.
    fn poll_inbound<L, R>(
        &mut self,
        cx: &mut Context<'_>,
        local: &mut L,
        leg: &mut R,
    ) -> Poll<Result<bool, Ended>>
    where
        L: AsyncRead + AsyncWrite + Unpin + ?Sized,
        R: AsyncRead + Unpin + ?Sized,
    {
        let mut moved = false;
        loop {
            // DATA payload in hand: to the local stream first (backpressure: nothing more
            // is read from the leg while the local stream does not take it).
            if self.inb.data_left > 0 && self.rpos < self.rend {
                let n = (self.rend - self.rpos).min(self.inb.data_left as usize);
                let written = match Pin::new(&mut *local)
                    .poll_write(cx, &self.rbuf[self.rpos..self.rpos + n])
                {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Ended::Local(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(w)) => w,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::Local(e))),
                    Poll::Pending => {
                        // Not reading the leg now: the peer's silence means nothing.
                        if let Some(t) = &mut self.timers {
                            t.last_rx = Instant::now();
                        }
                        return if moved {
                            Poll::Ready(Ok(true))
                        } else {
                            Poll::Pending
                        };
                    }
                };
                self.rpos += written;
                self.inb.data_left -= written as u32;
                self.inb.delivered += written as u64;
                self.inb.unflushed = true;
                moved = true;
                if self.inb.delivered - self.inb.ack_sent >= (self.config.window / 4) as u64 {
                    // Enough for an ACK: make sure the bytes really left us first.
                    match Pin::new(&mut *local).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.inb.unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::Local(e))),
                        Poll::Pending => {}
                    }
                }
                continue;
            }
            if self.inb.data_left == 0 && self.rpos < self.rend {
                match frame::parse(&self.rbuf[self.rpos..self.rend]) {
                    Err(e) => return Poll::Ready(Err(Ended::Protocol(e.to_string()))),
                    Ok(Parsed::Data { len }) => {
                        if self.inb.peer_fin.is_some() {
                            return Poll::Ready(Err(Ended::Protocol("DATA after FIN".into())));
                        }
                        self.rpos += frame::HEADER;
                        self.inb.data_left = len;
                        continue;
                    }
                    Ok(Parsed::Control { frame, used }) => {
                        self.rpos += used;
                        moved = true;
                        if let Err(ended) = self.on_control(frame) {
                            return Poll::Ready(Err(ended));
                        }
                        continue;
                    }
                    Ok(Parsed::Incomplete) => {}
                }
            }
            // The peer's EOF, once everything before it is passed on.
            if self.inb.peer_fin == Some(self.inb.delivered) && !self.inb.shutdown_done {
                match Pin::new(&mut *local).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {}
                    // The local side is gone already: nothing left to tell it.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::Local(e))),
                    Poll::Pending => {
                        return if moved {
                            Poll::Ready(Ok(true))
                        } else {
                            Poll::Pending
                        }
                    }
                }
                self.inb.shutdown_done = true;
                self.inb.unflushed = false;
                moved = true;
            }
            // Need more bytes from the leg.
            if self.rpos == self.rend {
                self.rpos = 0;
                self.rend = 0;
            } else if self.rend == self.rbuf.len() {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            if self.rbuf.is_empty() {
                self.rbuf = vec![0u8; IO_CHUNK];
            }
            let mut read = ReadBuf::new(&mut self.rbuf[self.rend..]);
            match Pin::new(&mut *leg).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        // The peer closes its leg only once it finished, which it does only
                        // after our EOF reached its local side and its EOF reached ours.
                        if self.out.local_eof && self.out.fin_acked && self.inb.shutdown_done {
                            return Poll::Ready(Err(Ended::Finished));
                        }
                        return Poll::Ready(Err(Ended::LegLost(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection was closed",
                        ))));
                    }
                    self.rend += n;
                    self.inb.leg_quiet = false;
                    if let Some(t) = &mut self.timers {
                        t.last_rx = Instant::now();
                    }
                    moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::LegLost(e))),
                Poll::Pending => {
                    self.inb.leg_quiet = true;
                    if self.rpos == self.rend {
                        // Idle: hold no read buffer.
                        self.rbuf = Vec::new();
                        self.rpos = 0;
                        self.rend = 0;
                    }
                    // Flush what went to the local stream before acknowledging it.
                    if self.inb.unflushed {
                        match Pin::new(&mut *local).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.inb.unflushed = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::Local(e))),
                            Poll::Pending => {}
                        }
                    }
                    return if moved {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }

    fn on_control(&mut self, frame: Control) -> Result<(), Ended> {
        match frame {
            Control::Ack { delivered, eof } => {
                if delivered < self.out.acked || delivered > self.out.sent {
                    return Err(Ended::Protocol(format!(
                        "ACK of {delivered} bytes, {} sent",
                        self.out.sent
                    )));
                }
                self.out.ack_to(delivered);
                if eof {
                    // The FIN may have gone out on an earlier leg: what counts is that the
                    // peer has the whole stream.
                    if !(self.out.local_eof && delivered == self.out.read_total()) {
                        return Err(Ended::Protocol("ACK of an EOF not sent".into()));
                    }
                    self.out.fin_acked = true;
                }
            }
            Control::Fin { total } => {
                if total != self.inb.delivered {
                    return Err(Ended::Protocol(format!(
                        "FIN at {total}, {} received",
                        self.inb.delivered
                    )));
                }
                self.inb.peer_fin = Some(total);
            }
            Control::Ping => {}
            Control::Abort(reason) => return Err(Ended::PeerAborted(reason)),
        }
        Ok(())
    }

    /// Reads the local stream into the window. `Ok(true)` when something moved.
    fn poll_read_local<L>(&mut self, cx: &mut Context<'_>, local: &mut L) -> Result<bool, Ended>
    where
        L: AsyncRead + Unpin + ?Sized,
    {
        if self.out.local_eof || self.out.buffered >= self.config.window {
            return Ok(false);
        }
        let want = (self.config.window - self.out.buffered).min(IO_CHUNK);
        if self.out.tail.capacity() - self.out.tail.len() < want {
            self.out.tail.reserve(want);
        }
        let mut limited = (&mut self.out.tail).limit(want);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *local), cx, &mut limited) {
            Poll::Ready(Ok(0)) => {
                self.out.local_eof = true;
                self.out.tail = BytesMut::new();
                Ok(true)
            }
            Poll::Ready(Ok(n)) => {
                // A small read is copied out, so it does not pin a whole read block
                // until it is acknowledged (memory stays within the window); the
                // block is read into again.
                let chunk = if n >= IO_CHUNK / 4 {
                    self.out.tail.split().freeze()
                } else {
                    let small = Bytes::copy_from_slice(&self.out.tail);
                    self.out.tail.clear();
                    small
                };
                self.out.buffered += n;
                self.out.chunks.push_back(chunk);
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(Ended::Local(e)),
            Poll::Pending => {
                // Idle: keep no spare read space.
                self.out.tail = BytesMut::new();
                Ok(false)
            }
        }
    }

    /// Queues frames (ACK, DATA, FIN, PING) and writes them to the leg. `Ok(true)` when
    /// something moved.
    fn poll_write_leg<R>(&mut self, cx: &mut Context<'_>, leg: &mut R) -> Result<bool, Ended>
    where
        R: AsyncWrite + Unpin + ?Sized,
    {
        let mut moved = false;
        loop {
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
                if !self.fill_frames() {
                    // Nothing to write: flush (TLS) and hold no write buffer.
                    if moved {
                        match Pin::new(&mut *leg).poll_flush(cx) {
                            Poll::Ready(Err(e)) => return Err(Ended::LegLost(e)),
                            Poll::Ready(Ok(())) | Poll::Pending => {}
                        }
                    }
                    if self.wbuf.capacity() > 0 {
                        self.wbuf = Vec::new();
                    }
                    return Ok(moved);
                }
            }
            match Pin::new(&mut *leg).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Err(Ended::LegLost(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    moved = true;
                    if let Some(t) = &mut self.timers {
                        t.last_tx = Instant::now();
                    }
                }
                Poll::Ready(Err(e)) => return Err(Ended::LegLost(e)),
                Poll::Pending => return Ok(moved),
            }
        }
    }

    /// Encodes what is due into `wbuf`; `false` when nothing is.
    fn fill_frames(&mut self) -> bool {
        if let Some(reason) = self.abort.take() {
            frame::push_control(&mut self.wbuf, &Control::Abort(reason));
            return true;
        }
        let unacked = self.inb.delivered - self.inb.ack_sent;
        let eof_due = self.inb.shutdown_done && !self.inb.eof_ack_sent;
        let ack_due = (unacked > 0
            && !self.inb.unflushed
            && (self.inb.leg_quiet || unacked >= (self.config.window / 4) as u64))
            || eof_due;
        if ack_due {
            frame::push_control(
                &mut self.wbuf,
                &Control::Ack {
                    delivered: self.inb.delivered,
                    eof: self.inb.shutdown_done,
                },
            );
            self.inb.ack_sent = self.inb.delivered;
            self.inb.eof_ack_sent = self.inb.shutdown_done;
        }
        while self.wbuf.len() < frame::MAX_DATA {
            let Some(bytes) = self.out.unsent(frame::MAX_DATA) else {
                break;
            };
            let len = bytes.len();
            if self.wbuf.capacity() == 0 {
                self.wbuf.reserve(frame::MAX_DATA + 64);
            }
            frame::push_data_header(&mut self.wbuf, len);
            self.wbuf.extend_from_slice(bytes);
            self.out.sent += len as u64;
        }
        if self.out.local_eof && self.out.sent == self.out.read_total() && !self.out.fin_sent {
            frame::push_control(
                &mut self.wbuf,
                &Control::Fin {
                    total: self.out.read_total(),
                },
            );
            self.out.fin_sent = true;
        }
        if self.wbuf.is_empty() {
            if let Some(t) = &self.timers {
                if t.last_tx + self.config.ping_every <= Instant::now() {
                    frame::push_control(&mut self.wbuf, &Control::Ping);
                }
            }
        }
        !self.wbuf.is_empty()
    }

    /// The leg's clocks: a PING when we were quiet, a lost leg when the peer was.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        let config = self.config;
        let Some(t) = &mut self.timers else {
            return Poll::Pending;
        };
        loop {
            let dead_at = t.last_rx + config.dead_after;
            let ping_at = t.last_tx + config.ping_every;
            let now = Instant::now();
            if dead_at <= now {
                return Poll::Ready(Ended::LegLost(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing heard for {}s", config.dead_after.as_secs_f64()),
                )));
            }
            let writing = self.wpos < self.wbuf.len();
            if ping_at <= now && !writing {
                // Due now: wake at once so the next poll writes it.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // While a write is pending, its readiness wakes us; only the peer's silence counts.
            let next = if writing {
                dead_at
            } else {
                dead_at.min(ping_at)
            };
            if t.sleep.deadline() != next {
                t.sleep.as_mut().reset(next);
            }
            ready!(t.sleep.as_mut().poll(cx));
        }
    }
}

/// A session as it is handed from one host process to the next (the systemd fd store):
/// the counts, the key and the unacknowledged bytes. Never logged.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    id: [u8; super::wire::ID_LEN],
    key: [u8; 32],
    generation: u64,
    config: SessionConfig,
    acked: u64,
    local_eof: bool,
    fin_acked: bool,
    delivered: u64,
    peer_fin: Option<u64>,
    shutdown_done: bool,
    /// The unacknowledged bytes (stored raw behind the header, see [`Snapshot::encode`]).
    #[serde(skip)]
    held: Vec<u8>,
}

impl Snapshot {
    /// `u32` header length, the header as JSON, then the held bytes raw.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail (nor can the header's JSON).
        let _ = self.write_to(&mut out);
        out
    }

    /// [`Snapshot::encode`] into `w` (a memfd for the next process), without a copy.
    pub fn write_to(&self, w: &mut impl std::io::Write) -> io::Result<()> {
        let header = serde_json::to_vec(self).map_err(io::Error::other)?;
        w.write_all(&(header.len() as u32).to_be_bytes())?;
        w.write_all(&header)?;
        w.write_all(&self.held)
    }

    /// Resumes accepted before it was taken.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes it holds for the peer (to be sent again after the resume).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Reads what [`Snapshot::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        let len = bytes
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("snapshot too short")?;
        let header = bytes.get(4..4 + len).ok_or("snapshot header cut short")?;
        let mut snapshot: Snapshot =
            serde_json::from_slice(header).map_err(|e| format!("snapshot header: {e}"))?;
        snapshot.held = bytes[4 + len..].to_vec();
        if snapshot.held.len() > snapshot.config.window {
            return Err("snapshot holds more than its window".into());
        }
        if snapshot
            .acked
            .checked_add(snapshot.held.len() as u64)
            .is_none()
        {
            return Err("snapshot counts overflow".into());
        }
        if snapshot.fin_acked && !(snapshot.local_eof && snapshot.held.is_empty()) {
            return Err("snapshot says its EOF was acknowledged with bytes still held".into());
        }
        if snapshot
            .peer_fin
            .is_some_and(|fin| fin < snapshot.delivered)
            || (snapshot.shutdown_done && snapshot.peer_fin != Some(snapshot.delivered))
        {
            return Err("snapshot's end of the peer's stream does not match its count".into());
        }
        Ok(snapshot)
    }

    /// The tunnel this snapshot continues.
    pub fn id(&self) -> TunnelId {
        TunnelId(self.id)
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// What the next process needs to continue this session (the leg is not part of
    /// it: the peer resumes on a new one).
    pub fn snapshot(&self) -> Snapshot {
        let mut held = Vec::with_capacity(self.out.buffered);
        for chunk in &self.out.chunks {
            held.extend_from_slice(chunk);
        }
        Snapshot {
            id: self.id.0,
            key: self.key.0,
            generation: self.generation,
            config: self.config,
            acked: self.out.acked,
            local_eof: self.out.local_eof,
            fin_acked: self.out.fin_acked,
            delivered: self.inb.delivered,
            peer_fin: self.inb.peer_fin,
            shutdown_done: self.inb.shutdown_done,
            held,
        }
    }

    /// The session a [`Snapshot`] describes, waiting for a resume.
    pub fn restore(snapshot: Snapshot) -> Session {
        let mut session = Session::new(
            TunnelId(snapshot.id),
            ResumeKey(snapshot.key),
            snapshot.config,
        );
        session.generation = snapshot.generation;
        session.out.acked = snapshot.acked;
        session.out.sent = snapshot.acked;
        session.out.buffered = snapshot.held.len();
        if !snapshot.held.is_empty() {
            session.out.chunks.push_back(Bytes::from(snapshot.held));
        }
        session.out.local_eof = snapshot.local_eof;
        session.out.fin_acked = snapshot.fin_acked;
        session.out.fin_sent = snapshot.fin_acked;
        session.inb.delivered = snapshot.delivered;
        session.inb.ack_sent = snapshot.delivered;
        session.inb.peer_fin = snapshot.peer_fin;
        session.inb.shutdown_done = snapshot.shutdown_done;
        session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::wire::{KeyPair, TunnelId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::watch;

    const WAIT: Duration = Duration::from_secs(20);

    fn pair(config: SessionConfig) -> (Session, Session) {
        let c = KeyPair::generate().expect("c");
        let h = KeyPair::generate().expect("h");
        let id = TunnelId::random().expect("id");
        let (cp, hp) = (c.public, h.public);
        let kc = c.agree(&hp, &id, &cp, &hp).expect("kc");
        let kh = h.agree(&cp, &id, &cp, &hp).expect("kh");
        (Session::new(id, kc, config), Session::new(id, kh, config))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + seed as usize) % 251) as u8)
            .collect()
    }

    /// Writes `data` into a local stream and half-closes it; reads what comes back until
    /// EOF, publishing the count as it grows.
    fn endpoint(
        stream: DuplexStream,
        data: Vec<u8>,
    ) -> (tokio::task::JoinHandle<Vec<u8>>, watch::Receiver<usize>) {
        let (tx, rx) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let writer = async move {
                // Small pieces so breaks land between them.
                for piece in data.chunks(7_777) {
                    w.write_all(piece).await.expect("local write");
                }
                w.shutdown().await.expect("local shutdown");
            };
            let reader = async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 10_000];
                loop {
                    let n = r.read(&mut buf).await.expect("local read");
                    if n == 0 {
                        break got;
                    }
                    got.extend_from_slice(&buf[..n]);
                    tx.send_replace(got.len());
                }
            };
            tokio::join!(writer, reader).1
        });
        (task, rx)
    }

    /// Two sessions across legs that break whenever `cut_every` more bytes arrived at
    /// either end: every byte arrives once, in order, EOFs included, and each end's
    /// memory stays within its window.
    #[tokio::test]
    async fn bytes_survive_broken_legs_in_both_directions() {
        let config = SessionConfig {
            window: 64 * 1024,
            ..SessionConfig::default()
        };
        let (mut client, mut host) = pair(config);
        let (mut client_local, client_app) = tokio::io::duplex(8 * 1024);
        let (mut host_local, host_app) = tokio::io::duplex(8 * 1024);
        let up = pattern(2_000_000, 1);
        let down = pattern(1_500_000, 2);
        let (client_app, mut at_client) = endpoint(client_app, up.clone());
        let (host_app, mut at_host) = endpoint(host_app, down.clone());
        let mut breaks = 0;
        let result = tokio::time::timeout(WAIT, async {
            loop {
                let (mut leg_c, mut leg_h) = tokio::io::duplex(16 * 1024);
                let (seen_c, seen_h) = (*at_client.borrow(), *at_host.borrow());
                let cut = async {
                    loop {
                        tokio::select! {
                            _ = at_client.changed() => {}
                            _ = at_host.changed() => {}
                        }
                        if *at_client.borrow() > seen_c + 300_000
                            || *at_host.borrow() > seen_h + 300_000
                        {
                            break;
                        }
                    }
                };
                // Anything but a finish (or the cut) is a failure, at once.
                let both = async {
                    tokio::join!(
                        async {
                            let r = client.run(&mut client_local, &mut leg_c).await;
                            assert!(matches!(r, Ended::Finished), "client: {r:?}");
                        },
                        async {
                            let r = host.run(&mut host_local, &mut leg_h).await;
                            assert!(matches!(r, Ended::Finished), "host: {r:?}");
                        }
                    )
                };
                tokio::select! {
                    _ = both => break,
                    () = cut => {}
                }
                assert!(client.held() <= config.window && host.held() <= config.window);
                breaks += 1;
                let (rc, rh) = (client.received(), host.received());
                client.resume_from(rh).expect("client resumes");
                host.resume_from(rc).expect("host resumes");
            }
        })
        .await;
        if result.is_err() {
            panic!("stuck after {breaks} breaks:\nclient {client:#?}\nhost {host:#?}");
        }
        assert!(breaks >= 3, "only {breaks} breaks");
        let got_down = client_app.await.expect("client app");
        let got_up = host_app.await.expect("host app");
        assert!(got_up == up, "upload intact");
        assert!(got_down == down, "download intact");
    }

    #[test]
    fn a_resume_outside_the_held_bytes_is_refused() {
        let (mut s, _) = pair(SessionConfig::default());
        assert_eq!(s.resume_from(0), Ok(0));
        assert_eq!(
            s.resume_from(1),
            Err(Mismatch {
                claimed: 1,
                acked: 0,
                total: 0
            })
        );
    }

    #[tokio::test]
    async fn snapshots_carry_the_counts_and_held_bytes() {
        let (mut client, mut host) = pair(SessionConfig::default());
        let (mut client_local, mut client_app) = tokio::io::duplex(64 * 1024);
        let (mut host_local, mut host_app) = tokio::io::duplex(64 * 1024);
        host_app
            .write_all(b"hello from the runner")
            .await
            .expect("w");
        client_app.write_all(b"hello from ssh").await.expect("w");
        let (mut leg_c, mut leg_h) = tokio::io::duplex(64 * 1024);
        // Relay until both directions arrived (the snapshot is taken after, so its counts
        // cover what the client got; whether the last ACK came back does not matter).
        let mut buf = [0u8; 14];
        let mut got = [0u8; 21];
        let both = async {
            host_app.read_exact(&mut buf).await.expect("read");
            client_app.read_exact(&mut got).await.expect("read");
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            tokio::select! {
                _ = host.run(&mut host_local, &mut leg_h) => panic!("host ended"),
                _ = client.run(&mut client_local, &mut leg_c) => panic!("client ended"),
                () = both => {}
            }
        })
        .await
        .expect("both directions within 30 s");
        assert_eq!(&buf, b"hello from ssh");
        assert_eq!(&got, b"hello from the runner");
        let snapshot = Snapshot::decode(&host.snapshot().encode()).expect("decode");
        let mut restored = Session::restore(snapshot);
        assert_eq!(restored.received(), 14);
        assert_eq!(restored.generation, 0);
        // The client has the runner's bytes: the restored host resumes from its count.
        assert!(restored.resume_from(client.received()).is_ok());
        assert!(format!("{:?}", restored.snapshot()).contains("held"));
        assert!(!format!("{restored:?}").contains(&format!("{:?}", restored.key().0)));
    }

    #[test]
    fn snapshots_with_impossible_counts_are_refused() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/resume_handshake/"
        );
        let read = |name: &str| std::fs::read(format!("{dir}{name}")).expect(name);
        let valid = Snapshot::decode(&read("snapshot-valid")).expect("valid");
        assert_eq!((valid.generation(), valid.held()), (3, 25));
        let restored = Session::restore(valid);
        assert_eq!(restored.progress().sent, 1025);
        assert_eq!(restored.received(), 2000);
        assert!(Snapshot::decode(&read("snapshot-eof")).is_ok());
        for (name, why) in [
            ("snapshot-overflow", "overflow"),
            ("snapshot-fin-before-delivered", "does not match"),
            ("snapshot-over-window", "more than its window"),
        ] {
            let err = Snapshot::decode(&read(name)).expect_err(name);
            assert!(err.contains(why), "{name}: {err}");
        }
    }
}
