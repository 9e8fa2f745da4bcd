"""Every use of grpcio's private API, in one place.

grpcio's public API cannot do these things a balancing channel needs: read a
finished grpc.aio call's status without awaiting, learn that a grpc.aio unary
call ended without two more objects per call, write a grpc.aio request
stream without losing the server's status to a write, ask an IDLE sync channel to
connect without leaving work for its polling thread, learn a sync channel's
connectivity without a polling thread per channel, and run asyncio client
interceptors around a call that is not made on one grpc.aio channel. Each helper here
degrades to the public API (or to None) when grpcio's internals change, and
``tests/unit/test_grpcio_private.py`` fails loudly when they do, so an upgrade
is noticed in CI rather than in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc import _common as grpc_common
from grpc._cython import cygrpc
from grpc.aio import _interceptor as _aio_interceptor

log = logging.getLogger("grpclb")

_STATUS_CODES: dict[Any, grpc.StatusCode] = grpc_common.CYGRPC_STATUS_CODE_TO_STATUS_CODE
_CONNECTIVITY: dict[Any, grpc.ChannelConnectivity] = (
    grpc_common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY
)


def aio_finished_status(call: Any) -> grpc.StatusCode | None:
    """A finished grpc.aio call's status without awaiting ``code()``; None when hidden.

    grpc.aio's ``code()`` is a coroutine even for a finished call; reading the
    Cython call's status keeps a done-callback synchronous. Interceptors wrap
    the call and hide it: then None, and the caller awaits the public way.
    """
    try:
        return _STATUS_CODES[call._cython_call._status.code()]
    except Exception:
        return None


def when_unary_call_ends(call: Any, callback: Callable[[], None]) -> None:
    """Run ``callback()`` when the grpc.aio unary-unary ``call`` ends, as ``add_done_callback``.

    grpc.aio's public ``add_done_callback`` wraps every callback in a
    ``functools.partial``: two more objects per call, alive while it runs.
    Measured on a busy asyncio client, the objects an attempt's callback made
    were most of what grpclb added to its young-generation collections. The
    Cython call takes a callback of no arguments. Such a callback may hold the
    call without making a cycle that outlives it: grpc.aio's invocation task
    holds a unary call until it ends anyway, and the Cython call drops its
    callbacks once they have run.
    """
    try:
        add = call._cython_call.add_done_callback
    except AttributeError:  # interceptors hide grpcio's call, or grpcio changed
        call.add_done_callback(lambda _: callback())
        return
    add(callback)


async def send_request_stream(call: Any, messages: Iterator[Any] | AsyncIterator[Any]) -> None:
    """Write ``messages`` on a grpc.aio stream-request call opened without them, then half-close.

    grpc.aio's own writers (a request iterator given to the call, or
    ``write()``) turn a write that loses the race with the server's status
    into INTERNAL "Internal error from Core", and that status replaces the
    server's: measured without grpclb, 80 of 100 bidirectional calls to a pod
    answering UNAVAILABLE ended INTERNAL. A retry decision needs the pod's own
    status, so this writer stops at the first write the core refuses and
    leaves the status to the server (``send_message``). As grpc.aio's does, it
    cancels the call when the caller's iterator raises. While it waits for the
    next message it holds the call only weakly: a call its caller dropped is
    collected, and cancelled by grpc.aio, as a call nobody writes to is.
    """
    attempt = weakref.ref(call)
    del call
    try:
        if isinstance(messages, AsyncIterator):
            async for message in messages:
                if not await send_message(attempt, message):
                    return
        else:
            for message in messages:
                if not await send_message(attempt, message):
                    return
        await half_close(attempt)
    except asyncio.CancelledError:
        _cancel(attempt)
        raise
    except Exception:
        log.debug("grpclb: a request iterator raised; the call is cancelled", exc_info=True)
        _cancel(attempt)


def headers_sent_or_ended(call: Any) -> None:
    """A stream-request call's done-callback: release what waits for its headers to go out.

    grpc.aio never marks the headers of a call cancelled before they were sent,
    so a write waiting for them (``send_message``, and grpc.aio's own
    ``write()``) would wait forever. Never raises, takes no lock.
    """
    sent = getattr(call, "_metadata_sent", None)
    if sent is not None and not sent.is_set():
        sent.set()


def done_writing(call: Any) -> bool:
    """Whether a grpc.aio stream-request call was half-closed (grpc.aio's own flag).

    A logical call answers the same question under the same name
    (``_done_writing_flag``) for grpc.aio's intercepted ``write()``, which asks it.
    """
    return bool(getattr(call, "_done_writing_flag", False))


async def half_close(attempt: weakref.ref[Any]) -> None:
    """Say a grpc.aio stream-request call will send no more; nothing if it ended."""
    call = attempt()
    if call is not None and not call.done():
        call._done_writing_flag = True
        # (InternalError: the call ended as it was half-closed; its status says how)
        with contextlib.suppress(cygrpc.InternalError):
            await call._cython_call.send_receive_close()


def _cancel(attempt: weakref.ref[Any]) -> None:
    call = attempt()
    if call is not None:
        call.cancel()


async def send_message(attempt: weakref.ref[Any], message: Any) -> bool:
    """Send one request message; False once the call has ended (its status says how).

    grpc.aio's ``write()`` without its INTERNAL for a write that raced the end.
    """
    call = attempt()
    if call is None or call.done():
        return False
    if not call._metadata_sent.is_set():
        await call._metadata_sent.wait()
        if call.done():
            return False
    serialized = grpc_common.serialize(message, call._request_serializer)
    if serialized is None:
        raise ValueError("grpclb: a request message could not be serialized")
    try:
        await call._cython_call.send_serialized_message(serialized)
    except cygrpc.InternalError:
        return False
    return True


def sync_response_headers(call: Any) -> Any:
    """A finished sync call's response headers, read without waiting; None when unknown.

    grpcio's ``initial_metadata()`` waits on the call's condition, and from a
    call's own done-callback (where retries of futures and streams are
    decided) that wait never ends. A grpcio error raised to the caller
    (``_InactiveRpcError``) holds its headers already.
    """
    state = getattr(call, "_state", None)
    if state is not None:
        return getattr(state, "initial_metadata", None)
    headers = getattr(call, "initial_metadata", None)
    return headers() if headers is not None else None


def core_channel(channel: grpc.Channel) -> Any:
    """The Cython channel under a sync ``grpc.Channel``, or None."""
    return getattr(channel, "_channel", None)


def request_connection(channel: grpc.Channel) -> bool:
    """Ask an IDLE sync channel to connect; False when the private hook is missing.

    ``subscribe(try_to_connect=True)`` leaves a flag that grpcio's polling
    thread acts on later, possibly after the channel closed; the core
    channel's ``check_connectivity_state(True)`` has no such after-effect.
    """
    core = core_channel(channel)
    if core is None:
        return False
    core.check_connectivity_state(True)
    return True


# --- asyncio client interceptors, once per logical call --------------------------------
#
# grpc.aio runs client interceptors only inside a grpc.aio channel, around the call it
# makes on its own connection. A balancing channel makes one logical call of several
# attempts on several pod channels, and the user's interceptors must see that logical
# call once, as ``grpc.intercept_channel`` does in sync. grpc.aio's intercepted-call
# classes do everything else right (the interceptor chain, its task, write() through a
# queue, the Call interface over the result), so grpclb reuses them and replaces only
# the end of the chain: where grpc.aio would start a call on its channel, grpclb starts
# its logical call.


MakeCall = Callable[[Any, Any], Any]  # (ClientCallDetails, request or iterator) -> call


class _EndsInLogicalCall:
    _make_logical_call: MakeCall

    async def _run_interceptor(self, interceptors: list[Any], *args: Any) -> Any:
        if interceptors:
            return await super()._run_interceptor(interceptors, *args)  # type: ignore[misc]
        details, request = args[-2], args[-1]
        call = self._make_logical_call(details, request)
        self._last_returned_call_from_interceptors = call  # what the stream kinds return
        return call


class _UnaryUnary(_EndsInLogicalCall, _aio_interceptor.InterceptedUnaryUnaryCall):  # type: ignore[misc]
    pass


class _UnaryStream(_EndsInLogicalCall, _aio_interceptor.InterceptedUnaryStreamCall):  # type: ignore[misc]
    pass


class _StreamUnary(_EndsInLogicalCall, _aio_interceptor.InterceptedStreamUnaryCall):  # type: ignore[misc]
    pass


class _StreamStream(_EndsInLogicalCall, _aio_interceptor.InterceptedStreamStreamCall):  # type: ignore[misc]
    pass


_INTERCEPTED = {
    "unary_unary": (_UnaryUnary, grpc.aio.UnaryUnaryClientInterceptor),
    "unary_stream": (_UnaryStream, grpc.aio.UnaryStreamClientInterceptor),
    "stream_unary": (_StreamUnary, grpc.aio.StreamUnaryClientInterceptor),
    "stream_stream": (_StreamStream, grpc.aio.StreamStreamClientInterceptor),
}


def interceptors_of(kind: str, interceptors: Sequence[Any]) -> list[Any]:
    """The interceptors that apply to calls of ``kind``, as grpc.aio's channel sorts them."""
    wanted = _INTERCEPTED[kind][1]
    return [i for i in interceptors if isinstance(i, wanted)]


def intercepted_call(
    kind: str,
    interceptors: list[Any],
    make_call: MakeCall,
    request: Any,
    method: str,
    timeout: float | None,
    metadata: Any,
    credentials: Any,
    wait_for_ready: bool | None,
    loop: Any,
) -> Any:
    """grpc.aio's intercepted call for ``kind`` whose chain ends in ``make_call``."""
    cls: Any = _INTERCEPTED[kind][0]
    call = cls.__new__(cls)
    call._make_logical_call = make_call
    cls.__init__(
        call,
        interceptors,
        request,
        timeout,
        metadata,
        credentials,
        wait_for_ready,
        None,  # grpc.aio's channel: never reached, the chain ends in make_call
        method.encode(),
        None,
        None,
        loop,
    )
    return call


def connectivity_reader(channel: grpc.Channel) -> Callable[[], grpc.ChannelConnectivity] | None:
    """A function reading a sync channel's state now, without connecting; None when hidden.

    The public way to learn a channel's state is ``subscribe``, which runs a
    polling thread per channel (1,000 pods, 1,000 threads). The core channel's
    ``check_connectivity_state(False)`` answers in about half a microsecond,
    does no I/O and leaves nothing pending, so one thread can read every pod
    channel of the process and a channel can be closed at any moment after.
    The reader raises ``ValueError`` once the channel is closed.
    """
    check = getattr(core_channel(channel), "check_connectivity_state", None)
    if check is None:
        return None
    states = _CONNECTIVITY

    def read() -> grpc.ChannelConnectivity:
        return states[check(False)]

    return read
