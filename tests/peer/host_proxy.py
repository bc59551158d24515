"""Runs HakuRiver 0.3.0's own Host SSH proxy on 127.0.0.1 with an OS-chosen port.

    python host_proxy.py DB_PATH

Uses `hakuriver.core.ssh_proxy.host.handle_connection` unchanged, served the way its
`start_server` does, but bound to port 0 so tests never use fixed ports. Prints one line
`PORT <n>` on stdout once listening; HakuRiver's logger goes to stderr. Runs until killed.
"""

import asyncio
import contextlib
import io
import logging
import sys

from hakuriver.db import models
from hakuriver.core.ssh_proxy import host
from hakuriver.utils.logger import logger


async def serve():
    server = await asyncio.start_server(host.handle_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: host_proxy.py DB_PATH")
    # HakuRiver logs to stdout; stdout carries only our PORT line.
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(io.StringIO()):
        models.initialize_database(sys.argv[1])
    asyncio.run(serve())


if __name__ == "__main__":
    main()
