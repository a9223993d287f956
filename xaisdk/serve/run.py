"""Start ``xaisdk serve``: check the bundle, then run the application on uvicorn until SIGINT/SIGTERM,
which stop new connections and let the requests in flight finish (up to the deadline) before exit.

Example (needs an exported bundle)::

    from xaisdk.serve import ServerConfig, serve
    serve(ServerConfig(bundle="bundle/"), host="127.0.0.1", port=8080)
"""

from __future__ import annotations

import logging
import signal
import sys

from xaisdk.errors import InputError
from xaisdk.serve.observability import ACCESS_LOG
from xaisdk.serve.service import ServerConfig

__all__ = ["serve"]


def serve(config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Serve ``config.bundle`` over HTTP; returns after a graceful shutdown."""
    import uvicorn

    from xaisdk.runtime.bundle import read_bundle
    from xaisdk.serve.app import create_app

    if not 0 <= int(port) <= 65535:
        raise InputError(f"port: expected 0..65535, got {port}")
    read_bundle(config.bundle)  # a missing or broken bundle is a clean error now, not a server that never gets ready
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False
    # uvicorn drains the requests in flight on SIGINT/SIGTERM, then restores the previous handlers and
    # raises the signal again; a handler of ours makes that a normal return (exit status 0) after the drain.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _drained)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=int(port), log_level=log_level,
                                           access_log=False, timeout_graceful_shutdown=int(config.timeout_s) + 5,
                                           lifespan="on"))
    server.run()


def _drained(signum: int, frame: object) -> None:
    """The signal uvicorn raises again once it has shut down: nothing left to do."""
