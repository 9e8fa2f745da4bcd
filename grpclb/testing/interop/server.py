"""gRPC's interop TestService on real grpcio servers, one per loopback "pod".

The servicer implements the server features of gRPC's interop spec
(grpc/grpc ``doc/interop-test-descriptions.md``, "Server") that the client
cases in ``tests/integration/test_interop.py`` rely on: EmptyCall, UnaryCall,
StreamingOutputCall, StreamingInputCall, FullDuplexCall, Echo Status, Echo
Metadata and ``ResponseParameters.interval_us``. UnimplementedCall is left to
the generated base class, which answers UNIMPLEMENTED, and UnimplementedService
is never registered, which the server answers UNIMPLEMENTED too: both are cases.

``start_servers`` starts one server per host on one shared port, so a DNS name
listing the hosts is a headless Service and ``ipv4:`` lists them statically.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from grpclb.testing._pod_main import format_address
from grpclb.testing.interop import empty_pb2, messages_pb2, services_pb2_grpc
from grpclb.testing.pods import pick_port

# "Echo Metadata": the keys a client sends to get their values back.
INITIAL_METADATA_KEY = "x-grpc-test-echo-initial"
TRAILING_METADATA_KEY = "x-grpc-test-echo-trailing-bin"
DEFAULT_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PORT_ATTEMPTS = 20
STOP_TIMEOUT_S = 5.0
_US_PER_S = 1_000_000
_CODES = {code.value[0]: code for code in grpc.StatusCode}

Request = messages_pb2.SimpleRequest | messages_pb2.StreamingOutputCallRequest


def _echo_metadata(context: grpc.ServicerContext) -> None:
    """Echo Metadata: sends back exactly the echo keys the client sent, with their values.

    The initial one goes out at once, before any response, as the spec asks; the
    trailing one is kept for the status, even when the call then fails.
    """
    sent = dict(context.invocation_metadata())
    if INITIAL_METADATA_KEY in sent:
        context.send_initial_metadata(((INITIAL_METADATA_KEY, sent[INITIAL_METADATA_KEY]),))
    if TRAILING_METADATA_KEY in sent:
        context.set_trailing_metadata(((TRAILING_METADATA_KEY, sent[TRAILING_METADATA_KEY]),))


def _end_if_asked(request: Request, context: grpc.ServicerContext) -> None:
    """Echo Status: a request carrying ``response_status`` ends the call with it, at once.

    "The server will not process any further messages on the stream", so nothing
    is sent for this request either. A code grpcio cannot send (outside 1..16)
    ends the call UNKNOWN; a code of 0 asks for nothing.
    """
    if not request.HasField("response_status"):
        return
    status = request.response_status
    if status.code == 0:
        return
    context.abort(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message)


def _check_type(response_type: int, context: grpc.ServicerContext) -> None:
    """An unknown ``response_type`` fails the call INVALID_ARGUMENT, as the spec says."""
    if response_type != messages_pb2.COMPRESSABLE:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"unsupported response_type {response_type}"
        )


def _payload(size: int) -> messages_pb2.Payload:
    """``size`` zero bytes, which clients may compare against a golden response."""
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(max(size, 0)))


class _Lifetime:
    """Whether the call still runs, and a pause that ends early when it stops.

    ``interval_us`` asks the server to wait before a response; a test that
    cancels the call or lets its deadline pass (timeout_on_sleeping_server)
    must not leave a worker thread asleep for the rest of the interval.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._ended = threading.Event()
        if not context.add_callback(self._ended.set):
            self._ended.set()  # it had already ended

    def pause(self, interval_us: int) -> bool:
        """Waits ``interval_us``; False when the call ended meanwhile (or before)."""
        if interval_us <= 0:
            return not self._ended.is_set()
        return not self._ended.wait(interval_us / _US_PER_S)


def _respond(
    parameters: Iterable[messages_pb2.ResponseParameters], lifetime: _Lifetime
) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
    """One response per ``ResponseParameters``, each after its interval; stops if the call ends."""
    for each in parameters:
        if not lifetime.pause(each.interval_us):
            return
        yield messages_pb2.StreamingOutputCallResponse(payload=_payload(each.size))


class TestService(services_pb2_grpc.TestServiceServicer):
    """The interop spec's TestService; every method answers at once unless asked to wait."""

    __test__ = False  # a servicer, not a pytest class, whatever its name

    def EmptyCall(self, request: empty_pb2.Empty, context: grpc.ServicerContext) -> empty_pb2.Empty:
        _echo_metadata(context)
        return empty_pb2.Empty()

    def UnaryCall(
        self, request: messages_pb2.SimpleRequest, context: grpc.ServicerContext
    ) -> messages_pb2.SimpleResponse:
        _echo_metadata(context)
        _end_if_asked(request, context)
        _check_type(request.response_type, context)
        return messages_pb2.SimpleResponse(payload=_payload(request.response_size))

    def StreamingOutputCall(
        self, request: messages_pb2.StreamingOutputCallRequest, context: grpc.ServicerContext
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        _end_if_asked(request, context)
        _check_type(request.response_type, context)
        yield from _respond(request.response_parameters, _Lifetime(context))

    def StreamingInputCall(
        self,
        request_iterator: Iterator[messages_pb2.StreamingInputCallRequest],
        context: grpc.ServicerContext,
    ) -> messages_pb2.StreamingInputCallResponse:
        total = sum(len(request.payload.body) for request in request_iterator)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    def FullDuplexCall(
        self,
        request_iterator: Iterator[messages_pb2.StreamingOutputCallRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        """Answers each request as it arrives; OK once the client half-closes and all is sent."""
        _echo_metadata(context)
        lifetime = _Lifetime(context)
        for request in request_iterator:
            _end_if_asked(request, context)
            _check_type(request.response_type, context)
            yield from _respond(request.response_parameters, lifetime)


@dataclass
class InteropServers:
    """Running TestService servers, one per host, all on ``port``; a context manager."""

    hosts: tuple[str, ...]
    port: int
    servers: list[grpc.Server] = field(repr=False)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(format_address(host, self.port) for host in self.hosts)

    @property
    def target(self) -> str:
        """A static ``ipv4:``/``ipv6:`` target listing every server, for channels without DNS."""
        scheme = "ipv6" if any(":" in host for host in self.hosts) else "ipv4"
        return f"{scheme}:" + ",".join(self.addresses)

    def stop(self, grace: float | None = None) -> None:
        """Stops every server (calls in flight are cancelled unless ``grace``); bounded."""
        events = [server.stop(grace) for server in self.servers]
        for event in events:
            event.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> InteropServers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_servers(
    hosts: Sequence[str] = DEFAULT_HOSTS, *, port: int | None = None, max_workers: int = 16
) -> InteropServers:
    """Starts a TestService server on each of ``hosts``, all on one port.

    Without ``port``, one free on every host is chosen (below Linux's ephemeral
    range, as the test pods do); should another process take it between the
    probe and the bind, another is tried, a bounded number of times.
    """
    if not hosts:
        raise ValueError("start_servers needs at least one host")
    attempts = 1 if port is not None else PORT_ATTEMPTS
    errors: list[str] = []
    for _ in range(attempts):
        chosen = port if port is not None else pick_port(hosts)
        try:
            return _start_on(tuple(hosts), chosen, max_workers)
        except OSError as error:
            errors.append(str(error))
    raise OSError(f"could not start interop servers on {list(hosts)}: {'; '.join(errors)}")


def _start_on(hosts: tuple[str, ...], port: int, max_workers: int) -> InteropServers:
    """All servers or none: a host whose bind fails stops the ones already started."""
    running = InteropServers(hosts, port, [])
    try:
        for host in hosts:
            running.servers.append(_serve(host, port, max_workers))
    except BaseException:
        running.stop()
        raise
    return running


def _serve(host: str, port: int, max_workers: int) -> grpc.Server:
    """One server; ``grpc.so_reuseport`` off so a taken address fails instead of being shared."""
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="interop")
    server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
    add: Any = services_pb2_grpc.add_TestServiceServicer_to_server  # generated, untyped
    add(TestService(), server)
    try:
        server.add_insecure_port(format_address(host, port))
    except RuntimeError as error:
        executor.shutdown(wait=False)
        raise OSError(f"cannot bind {format_address(host, port)}: {error}") from error
    server.start()
    return server
