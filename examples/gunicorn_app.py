"""gunicorn: one grpclb channel per worker process, created in the ``post_fork`` hook.

    cd examples && ECHO_TARGET=dns:///echo.default.svc.cluster.local:9000 \\
        gunicorn --workers 4 --preload gunicorn_app:app

gunicorn reads the hooks ``post_fork`` and ``worker_exit`` from its config file,
examples/gunicorn.conf.py (the default name, found in the working directory), which
imports them from here. grpcio channels do not survive
``fork()``, so the master must never create the channel, with or without
``--preload`` (which imports this module in the master, before forking): only the
hook does, in each worker. A channel created in the master and used in a worker
raises ``ValueError`` there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc

channel: grpclb.Channel | None = None  # this worker's, set by post_fork


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn hook, run in each new worker: the worker's own channel."""
    global channel
    channel = grpclb.channel(os.environ["ECHO_TARGET"])


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, run in the worker as it exits: close its pods' connections."""
    if channel is not None:
        channel.close()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI: call the service, answer with this worker's pid and the pod that served."""
    assert channel is not None, "post_fork did not run: is gunicorn.conf.py in use?"
    delay = int(environ.get("QUERY_STRING", "").partition("sleep_ms=")[2] or 0)
    reply = echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(sleep_ms=delay), timeout=5)
    body = f"{os.getpid()} {reply.pod}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
