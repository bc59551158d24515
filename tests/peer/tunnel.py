"""A minimal ssh ProxyCommand that opens a HakuRiver tunnel and relays stdio.

    ssh -o ProxyCommand="python3 tunnel.py HOST PORT TASK_ID" ...

Sends `REQUEST_TUNNEL <TASK_ID>\\n`, reads the reply line byte by byte (so no byte of
the sshd banner that may follow is swallowed), and on `SUCCESS\\n` relays stdin to the
socket and the socket to stdout, passing half-close along. On any other reply it
prints the reply on stderr and exits 255. Deliberately independent of the project's
client so the proxy is tested against a separate implementation.
"""

import os
import selectors
import socket
import sys


def main():
    host, port, task_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(f"REQUEST_TUNNEL {task_id}\n".encode())
    reply = b""
    while not reply.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            break
        reply += b
        if len(reply) > 4096:
            break
    if reply != b"SUCCESS\n":
        sys.stderr.write(f"tunnel.py: proxy replied {reply!r}\n")
        sys.exit(255)
    sock.settimeout(None)

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    open_dirs = 2
    while open_dirs:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(stdin, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sel.unregister(stdin)
                    sock.shutdown(socket.SHUT_WR)
                    open_dirs -= 1
            else:
                data = sock.recv(65536)
                if data:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout, view):]
                else:
                    sel.unregister(sock)
                    os.close(stdout)
                    open_dirs -= 1


if __name__ == "__main__":
    main()
