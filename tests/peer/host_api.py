"""Serves HakuRiver 0.3.0's own Host HTTP API (its FastAPI app, `hakuriver.core.host.app`)
on 127.0.0.1 with an OS-chosen port, against an existing database.

    HAKURIVER_CONFIG=tests/peer/hakuriver-client.toml python host_api.py DB_PATH

The app's route handlers run unchanged; its startup hook is not run (it builds a Docker
base image and starts the runner watchdog and the SSH proxy), the database is opened
the way that hook opens it. Prints `PORT <n>` on stdout once listening; logs go to
stderr. Runs until killed.
"""

import asyncio
import contextlib
import io
import logging
import socket
import sys

import fastapi
import uvicorn

# HakuRiver 0.3.0 registers its startup and shutdown hooks with
# `app.add_event_handler`, which the FastAPI in this venv no longer has; the hooks are
# not wanted here anyway (see above), so registering them does nothing.
if not hasattr(fastapi.FastAPI, "add_event_handler"):
    fastapi.FastAPI.add_event_handler = lambda self, event, handler: None

# HakuRiver logs to stdout, from import on; stdout carries only our PORT line.
with contextlib.redirect_stdout(sys.stderr):
    from hakuriver.core import host
    from hakuriver.db import models
    from hakuriver.utils.logger import logger


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: host_api.py DB_PATH")
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(io.StringIO()):
        models.initialize_database(sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(host.app, log_level="info", access_log=True)
    server = uvicorn.Server(config)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
