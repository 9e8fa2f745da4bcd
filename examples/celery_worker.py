"""Celery: one grpclb channel per prefork worker process, made in ``worker_process_init``.

    ECHO_TARGET=dns:///echo.default.svc.cluster.local:9000 \\
        celery --workdir examples -A celery_worker worker --pool prefork --concurrency 4

Celery's prefork pool forks its worker processes from the main one; grpcio channels
do not survive ``fork()``, so each child makes its own when the
``worker_process_init`` signal fires in it, and closes it on
``worker_process_shutdown``. Never create the channel at import time.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc

app = Celery("echo", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
channel: grpclb.Channel | None = None  # this worker process's


@worker_process_init.connect
def open_channel(**kwargs: Any) -> None:
    global channel
    channel = grpclb.channel(os.environ["ECHO_TARGET"])


@worker_process_shutdown.connect
def close_channel(**kwargs: Any) -> None:
    if channel is not None:
        channel.close()


@app.task
def who(message: str) -> tuple[int, str]:
    """Call the service from a task: (this worker's pid, the pod that served)."""
    assert channel is not None, "worker_process_init did not run in this process"
    reply = echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(message=message), timeout=5)
    return os.getpid(), reply.pod
