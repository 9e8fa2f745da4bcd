"""FastAPI: a grpclb.aio channel created inside the lifespan, in the worker's event loop.

    ECHO_TARGET=dns:///echo.default.svc.cluster.local:9000 \\
        uvicorn --app-dir examples fastapi_app:app --workers 4

grpc.aio channels belong to the event loop that creates them, and grpcio channels
do not survive ``fork()``; the lifespan runs in each worker process, inside the loop
that serves requests, so the channel is made there and closed on shutdown. Never
create it at import time (gunicorn ``--preload`` with uvicorn workers imports this
module in the master).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import grpclb.aio
from grpclb.testing import echo_pb2, echo_pb2_grpc


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with grpclb.aio.channel(os.environ["ECHO_TARGET"]) as channel:
        app.state.echo = echo_pb2_grpc.EchoStub(channel)
        yield  # the app serves requests here; the channel closes after


app = FastAPI(lifespan=lifespan)


@app.get("/who")
async def who() -> dict[str, object]:
    reply = await app.state.echo.Unary(echo_pb2.EchoRequest(), timeout=5)
    return {"pid": os.getpid(), "pod": reply.pod}
