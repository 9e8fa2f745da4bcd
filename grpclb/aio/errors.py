"""The errors an asyncio call raises, made the way grpc.aio makes them.

A grpclb asyncio call raises what a grpc.aio call would: an ``AioRpcError``
for a failure (one that ended inside grpclb, before any pod, included), a
new one for every ``await`` of a kept failure, and ``CancelledError`` for a
cancelled call awaited.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from grpclb.errors import CANCELLED_DETAILS, LocalRpcError


def as_aio_error(error: LocalRpcError) -> grpc.aio.AioRpcError:
    """A failure before any pod, in the type grpc.aio callers catch."""
    return grpc.aio.AioRpcError(
        error.code(), grpc.aio.Metadata(), grpc.aio.Metadata(), details=error.details()
    )


def raisable(error: BaseException) -> BaseException:
    """A kept failure, new for each raise, as grpc.aio makes a new error per ``await``.

    A raised exception gathers the frames it passes through, and they hold
    the call: a call that kept the raised one would sit in a reference cycle
    with its caller's frames, freed only by the collector.
    """
    if isinstance(error, grpc.aio.AioRpcError):
        return grpc.aio.AioRpcError(  # type: ignore[no-any-return]
            error.code(),
            error.initial_metadata(),
            error.trailing_metadata(),
            error.details(),
            error.debug_error_string(),
        )
    if isinstance(error, asyncio.CancelledError):
        return asyncio.CancelledError(*error.args)
    return error


def cancelled_error() -> grpc.aio.AioRpcError:
    """What a call cancelled before any attempt reports, as grpc.aio's cancelled call does."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.CANCELLED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=CANCELLED_DETAILS,
    )
