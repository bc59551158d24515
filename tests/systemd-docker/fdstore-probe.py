#!/usr/bin/python3
"""What systemd's file descriptor store does, seen from a service (test only).

Run by fdstore-probe.service (Type=notify, FileDescriptorStoreMax=8), which
fdstore-probe.socket (127.0.0.1:9999, FileDescriptorName=listen) starts. It does, in
small, what the proxy does with an open tunnel across a restart:

* When the store came back empty, it accepts one connection on "listen" and puts into
  the store, with FDSTORE=1, FDNAME= and FDPOLL=0: the connection ("conn"), a memfd
  holding a counter ("state"), and both ends of a pipe with 8 bytes left unread in it
  ("pipe-r", "pipe-w"), like a tunnel's socket, state record and splice pipe.
* On every start it bumps the counter in the memfd it got back, reads 4 of the bytes
  waiting in the pipe, and writes one line to the connection and to the journal:

    probe: pid=<pid> FDSTORE=<value or unset> LISTEN_FDS=<n>
           LISTEN_FDNAMES=<names in the order received> state=<counter> pipe=<4 bytes>

So the client on "conn" sees one line per process generation while its connection
stays open, and EOF once systemd closes the stored descriptors. Then it waits for
SIGTERM and exits 0 (SIGKILL is the crash case). systemd 252's systemd-notify has no
--fd option, hence Python and SCM_RIGHTS on $NOTIFY_SOCKET.
"""
import array
import os
import signal
import socket


def notify(message, fds=()):
    """Send one sd_notify datagram, passing `fds` with SCM_RIGHTS."""
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    ancillary = []
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendmsg([message.encode()], ancillary, 0, addr)


def main():
    mine = os.environ.get("LISTEN_PID") == str(os.getpid())
    n = int(os.environ.get("LISTEN_FDS", "0")) if mine else 0
    names = os.environ.get("LISTEN_FDNAMES", "").split(":") if n else []
    fds = dict(zip(names, range(3, 3 + n)))

    fresh = "conn" not in fds
    if fresh:
        listener = socket.socket(fileno=fds["listen"])
        conn, _ = listener.accept()
        listener.detach()  # systemd's socket: leave it open
        memfd = os.memfd_create("probe-state")
        os.write(memfd, b"0")
        r, w = os.pipe()
        os.write(w, b"inflight")
        fds.update({"conn": conn.detach(), "state": memfd, "pipe-r": r, "pipe-w": w})

    state_fd = fds["state"]
    state = int(os.pread(state_fd, 64, 0) or b"0") + 1
    os.ftruncate(state_fd, 0)
    os.pwrite(state_fd, str(state).encode(), 0)
    os.set_blocking(fds["pipe-r"], False)
    try:
        pipe = os.read(fds["pipe-r"], 4).decode() or "eof"
    except BlockingIOError:
        pipe = "empty"

    line = (f"probe: pid={os.getpid()} FDSTORE={os.environ.get('FDSTORE', 'unset')} "
            f"LISTEN_FDS={n} LISTEN_FDNAMES={':'.join(names) or '-'} state={state} pipe={pipe}")
    print(line, flush=True)
    os.write(fds["conn"], (line + "\n").encode())

    if fresh:
        for name in ("conn", "state", "pipe-r", "pipe-w"):
            notify(f"FDSTORE=1\nFDNAME={name}\nFDPOLL=0", [fds[name]])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    notify("READY=1")
    signal.sigwait({signal.SIGTERM})


main()
