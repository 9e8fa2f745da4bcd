"""The asyncio flavour's health Watch: one task per pod connection, only with health_check on.

The task reads the connection's ``grpc.health.v1.Health/Watch`` stream on the
pod's own grpc.aio channel and reports every answer to the core, which owns
what an answer means and the pace of retries (``grpclb.core.health``). It is
cancelled when its connection closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from grpclb.core.endpoints import Connection
from grpclb.core.health import (
    UNIMPLEMENTED,
    WATCH_METHOD,
    WatchBackoff,
    decode_status,
    encode_request,
    state_after_error,
    state_of_status,
)

log = logging.getLogger("grpclb")


async def watch_health(
    connection: Connection, report: Callable[[Connection, str], None], service: str
) -> None:
    """Watch until the connection closes, the task is cancelled, or the pod has no service."""
    try:
        await _watch(connection, report, service)
    except asyncio.CancelledError:
        pass
    except Exception:
        if not connection.closing:
            log.exception("grpclb: the health watch of %s failed", connection)


async def _watch(
    connection: Connection, report: Callable[[Connection, str], None], service: str
) -> None:
    request, backoff = encode_request(service), WatchBackoff()
    watch = connection.channel.unary_stream(WATCH_METHOD)
    while not connection.closing:
        delay = backoff.next_delay()
        if delay:
            await asyncio.sleep(delay)
        call: Any = watch(request, wait_for_ready=True)  # waits for the connection
        try:
            async for message in call:
                backoff.answered()
                report(connection, state_of_status(decode_status(message)))
            code = await call.code()  # the server ended the stream: watch again
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
        except asyncio.CancelledError:
            call.cancel()  # A17: "There is no need to wait for the final status"
            raise
        if connection.closing:
            return
        state = state_after_error(code)
        report(connection, state)
        if state == UNIMPLEMENTED:
            return  # A17: no health service, so no retry
