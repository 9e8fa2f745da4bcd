"""Metrics and trace events, through opentelemetry-api only.

Names follow gRPC's own OpenTelemetry specs where one exists (gRFC A66
per-attempt metrics, A94 subchannel metrics, A91 outlier-detection metrics),
so dashboards built for gRPC's C++/Go/Java clients read ours; the rest live
under ``grpclb.``. Instruments are created once per channel. When no SDK is
configured (the API's proxy provider) and none is passed in, the channel gets
``NULL_TELEMETRY`` and the call path does no metric work at all: configure
the SDK before creating channels, or pass ``meter_provider=``.

Cardinality: the per-pod attribute ``grpclb.endpoint`` ("ip:port") is added
only while the channel has at most ``metrics_endpoint_limit`` pods.
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

T = TypeVar("T")

# --- names: one place, as the docs' metrics reference lists them ---
ATTEMPT_STARTED = "grpc.client.attempt.started"  # gRFC A66
ATTEMPT_DURATION = "grpc.client.attempt.duration"  # gRFC A66
CALL_DURATION = "grpc.client.call.duration"  # gRFC A66: one logical call, retries inside
OPEN_CONNECTIONS = "grpc.subchannel.open_connections"  # gRFC A94
DISCONNECTIONS = "grpc.subchannel.disconnections"  # gRFC A94
EJECTIONS_ENFORCED = "grpc.lb.outlier_detection.ejections_enforced"  # gRFC A91
EJECTIONS_UNENFORCED = "grpc.lb.outlier_detection.ejections_unenforced"  # gRFC A91
ENDPOINTS = "grpclb.endpoints"
IN_FLIGHT = "grpclb.in_flight"
RECYCLES = "grpclb.connection.recycles"
RETRIES = "grpclb.retries"
RETRIES_REFUSED = "grpclb.retries.refused"
RESOLUTIONS = "grpclb.dns.resolutions"
CIRCUIT_BREAKER_REFUSALS = "grpclb.circuit_breaker.refusals"
HEALTH_TRANSITIONS = "grpclb.health.transitions"

ATTR_TARGET = "grpc.target"
ATTR_METHOD = "grpc.method"
ATTR_STATUS = "grpc.status"
ATTR_ENDPOINT = "grpclb.endpoint"
ATTR_STATE = "grpclb.endpoint.state"
ATTR_DETECTION = "grpc.lb.outlier_detection.detection_method"  # gRFC A91
ATTR_UNENFORCED = "grpc.lb.outlier_detection.unenforced_reason"  # gRFC A91
ATTR_OUTCOME = "grpclb.dns.outcome"
ATTR_ATTEMPT = "grpclb.attempt"
ATTR_HEALTH = "grpclb.health.state"

# "unregistered/generic method names should by default be reported with "other"" - gRFC A66
OTHER_METHOD = "other"


def _bounds(text: str) -> tuple[float, ...]:
    return tuple(float(bound) for bound in text.split())


# Seconds; gRFC A66's latency buckets, from 0 to 100 s.
DURATION_BUCKETS = _bounds(
    "0 0.00001 0.00005 0.0001 0.0003 0.0006 0.0008 0.001 0.002 0.003 0.004 0.005 0.006 "
    "0.008 0.01 0.013 0.016 0.02 0.025 0.03 0.04 0.05 0.065 0.08 0.1 0.13 0.16 0.2 0.25 "
    "0.3 0.4 0.5 0.65 0.8 1 2 5 10 20 50 100"
)


def method_attribute(method: str) -> str:
    """``/pkg.Service/Method`` as gRFC A66 (and grpc-go, -java, C++) write it: no leading slash."""
    return method[1:] if method.startswith("/") else method


def status_of(error: BaseException | None) -> grpc.StatusCode | None:
    """The status a call's caller saw: OK, the code of its RpcError, or None for no status."""
    if error is None:
        return grpc.StatusCode.OK
    code = getattr(error, "code", None)
    if isinstance(error, grpc.RpcError) and callable(code):
        found = code()
        return found if isinstance(found, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if type(error).__name__ == "CancelledError":  # asyncio's: the caller cancelled its task
        return grpc.StatusCode.CANCELLED
    return None  # the caller's own error (a closed channel, an interrupt): no status


def _sdk_configured(provider: metrics.MeterProvider) -> bool:
    # The API hands out a proxy until an SDK provider is installed.
    return not isinstance(provider, metrics.NoOpMeterProvider) and (
        type(provider).__name__ != "_ProxyMeterProvider"
    )


class Telemetry:
    """One channel's instruments and trace events."""

    enabled = True

    def __init__(
        self,
        target: str,
        meter_provider: metrics.MeterProvider,
        endpoint_limit: int,
        observe: Callable[[], Iterable[tuple[str, str, int, bool]]],
    ) -> None:
        """``observe`` yields (address, state, in_flight, connected) for each pod."""
        from grpclb import __version__

        self._target = {ATTR_TARGET: target}
        self._limit = endpoint_limit
        self._observe = observe
        self._attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        # Raw method -> its grpc.method value; only registered methods get their name.
        self._methods: dict[str, str] = {}
        self._call_attributes: dict[tuple[str, grpc.StatusCode], dict[str, Any]] = {}
        meter = meter_provider.get_meter("grpclb", __version__)
        self._started = meter.create_counter(
            ATTEMPT_STARTED, "{attempt}", "Attempts started, per pod picked."
        )
        self._duration = meter.create_histogram(
            ATTEMPT_DURATION,
            "s",
            "Attempt duration, from pick to status.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._call_duration = meter.create_histogram(
            CALL_DURATION,
            "s",
            "Call duration as the caller sees it, every attempt and backoff included.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._disconnections = meter.create_counter(
            DISCONNECTIONS, "{disconnection}", "Connections to pods that were lost."
        )
        self._ejections = meter.create_counter(
            EJECTIONS_ENFORCED, "{ejection}", "Pods ejected by outlier detection."
        )
        self._overflow = meter.create_counter(
            EJECTIONS_UNENFORCED, "{ejection}", "Ejections skipped by max_ejection_percent."
        )
        self._recycles = meter.create_counter(
            RECYCLES, "{connection}", "Connections replaced by age or request count."
        )
        self._retries = meter.create_counter(RETRIES, "{retry}", "Retries started.")
        self._refused = meter.create_counter(
            RETRIES_REFUSED, "{retry}", "Retries the retry budget refused."
        )
        self._resolutions = meter.create_counter(
            RESOLUTIONS, "{resolution}", "DNS resolutions by outcome."
        )
        self._circuit = meter.create_counter(
            CIRCUIT_BREAKER_REFUSALS, "{call}", "Calls refused by max_requests."
        )
        self._health = meter.create_counter(
            HEALTH_TRANSITIONS, "{transition}", "Health check state changes, by the new state."
        )
        _observers_of(meter_provider, meter).add(self)

    def _with_endpoint(self, address: str, count: int, **more: Any) -> dict[str, Any]:
        key = (address, count <= self._limit, *sorted(more.items()))
        found = self._attributes.get(key)
        if found is None:
            found = {**self._target, **more}
            if count <= self._limit:
                found[ATTR_ENDPOINT] = address
            if len(self._attributes) < 10_000:  # bounded cache
                self._attributes[key] = found
        return found

    # --- methods ---
    def register_method(self, method: str) -> None:
        """A method a generated stub registered (``_registered_method=True``): named in metrics.

        Any other method is recorded as "other", as gRFC A66 asks and grpcio's own
        plugin does, so arbitrary method strings cannot blow up cardinality.
        """
        self._methods[method] = method_attribute(method)

    def _method(self, method: str) -> str:
        return self._methods.get(method, OTHER_METHOD)

    # --- per call: one logical call, its retries inside (gRFC A66) ---
    def call_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Record one logical call: from its start to the status its caller got."""
        key = (method, code)
        attributes = self._call_attributes.get(key)
        if attributes is None:
            attributes = {**self._target, ATTR_METHOD: self._method(method), ATTR_STATUS: code.name}
            if len(self._call_attributes) < 10_000:  # bounded cache
                self._call_attributes[key] = attributes
        self._call_duration.record(seconds, attributes)

    def call_ended(self, method: str, started: float, error: BaseException | None) -> None:
        """``call_finished`` from the call's ``perf_counter`` start and what it raised, if any."""
        code = status_of(error)
        if code is not None:
            self.call_finished(method, code, time.perf_counter() - started)

    def timed(self, method: str, run: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (every attempt of it) and record it as one call."""
        started = time.perf_counter()
        try:
            result = run(*args)
        except BaseException as error:
            self.call_ended(method, started, error)
            raise
        self.call_finished(method, grpc.StatusCode.OK, time.perf_counter() - started)
        return result

    # --- per attempt (the call path checks ``enabled`` first) ---
    def attempt_started(self, method: str, address: str, pods: int) -> None:
        self._started.add(
            1, self._with_endpoint(address, pods, **{ATTR_METHOD: self._method(method)})
        )

    def attempt_finished(
        self, method: str, address: str, pods: int, code: grpc.StatusCode | None, seconds: float
    ) -> None:
        status = code.name if code is not None else "CANCELLED"
        attributes = self._with_endpoint(
            address, pods, **{ATTR_METHOD: self._method(method), ATTR_STATUS: status}
        )
        self._duration.record(seconds, attributes)

    # --- events of the core ---
    def disconnected(self, address: str, pods: int) -> None:
        self._disconnections.add(1, self._with_endpoint(address, pods))

    def ejected(self, address: str, pods: int, reason: str) -> None:
        self._ejections.add(1, self._with_endpoint(address, pods, **{ATTR_DETECTION: reason}))

    def ejection_overflow(self, method: str) -> None:
        """An ejection by ``method`` that max_ejection_percent forbade."""
        attributes = {**self._target, ATTR_DETECTION: method}
        self._overflow.add(1, {**attributes, ATTR_UNENFORCED: "max_ejection_percent"})

    def recycled(self, address: str, pods: int) -> None:
        self._recycles.add(1, self._with_endpoint(address, pods))

    def health_changed(self, address: str, pods: int, state: str) -> None:
        self._health.add(1, self._with_endpoint(address, pods, **{ATTR_HEALTH: state}))

    def retry(self, granted: bool) -> None:
        (self._retries if granted else self._refused).add(1, self._target)

    def resolved(self, outcome: str) -> None:
        self._resolutions.add(1, {**self._target, ATTR_OUTCOME: outcome})

    def circuit_breaker_refused(self) -> None:
        self._circuit.add(1, self._target)

    # --- observations, read when the SDK collects ---
    def _observe_endpoints(self, options: Any) -> Iterable[metrics.Observation]:
        counts: dict[str, int] = {}
        for _, state, _, _ in self._observe():
            counts[state] = counts.get(state, 0) + 1
        return [metrics.Observation(n, {**self._target, ATTR_STATE: s}) for s, n in counts.items()]

    def _observe_in_flight(self, options: Any) -> Iterable[metrics.Observation]:
        return self._per_pod_or_total([(a, n) for a, _, n, _ in self._observe()])

    def _observe_connections(self, options: Any) -> Iterable[metrics.Observation]:
        return self._per_pod_or_total([(a, int(c)) for a, _, _, c in self._observe()])

    def _per_pod_or_total(self, values: list[tuple[str, int]]) -> list[metrics.Observation]:
        """One observation per pod, or their sum when per-pod attributes are off."""
        if len(values) > self._limit:
            return [metrics.Observation(sum(v for _, v in values), self._target)]
        return [metrics.Observation(v, self._with_endpoint(a, len(values))) for a, v in values]


class _Observers:
    """The observable instruments of one MeterProvider, reading every live channel.

    An SDK keeps the first instrument registered under a name, so a second
    channel on the same provider must not register its own: one set of
    instruments per provider asks each channel in turn. Channels are held
    weakly, so a provider never keeps a closed channel alive.
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self._channels: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        meter.create_observable_up_down_counter(
            ENDPOINTS, [self._each("_observe_endpoints")], "{endpoint}", "Pods by state."
        )
        meter.create_observable_gauge(
            IN_FLIGHT, [self._each("_observe_in_flight")], "{call}", "Calls in flight per pod."
        )
        meter.create_observable_up_down_counter(
            OPEN_CONNECTIONS,
            [self._each("_observe_connections")],
            "{connection}",
            "Open connections to pods.",
        )

    def add(self, telemetry: Telemetry) -> None:
        self._channels.add(telemetry)

    def _each(self, method: str) -> Callable[[Any], Iterable[metrics.Observation]]:
        def observe(options: Any) -> Iterable[metrics.Observation]:
            return [o for t in list(self._channels) for o in getattr(t, method)(options)]

        return observe


_OBSERVERS: weakref.WeakKeyDictionary[Any, _Observers] = weakref.WeakKeyDictionary()
_OBSERVERS_LOCK = threading.Lock()


def _observers_of(provider: metrics.MeterProvider, meter: metrics.Meter) -> _Observers:
    with _OBSERVERS_LOCK:
        found = _OBSERVERS.get(provider)
        if found is None:
            found = _OBSERVERS[provider] = _Observers(meter)
        return found


class NullTelemetry(Telemetry):
    """No SDK: every hook is a no-op, and the call path skips timing altogether."""

    enabled = False

    def __init__(self) -> None:
        pass

    def register_method(self, method: str) -> None:
        pass

    def call_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        pass

    def call_ended(self, method: str, started: float, error: BaseException | None) -> None:
        pass

    def timed(self, method: str, run: Callable[..., T], *args: Any) -> T:
        return run(*args)

    def attempt_started(self, method: str, address: str, pods: int) -> None:
        pass

    def attempt_finished(
        self, method: str, address: str, pods: int, code: grpc.StatusCode | None, seconds: float
    ) -> None:
        pass

    def disconnected(self, address: str, pods: int) -> None:
        pass

    def ejected(self, address: str, pods: int, reason: str) -> None:
        pass

    def ejection_overflow(self, method: str) -> None:
        pass

    def recycled(self, address: str, pods: int) -> None:
        pass

    def health_changed(self, address: str, pods: int, state: str) -> None:
        pass

    def retry(self, granted: bool) -> None:
        pass

    def resolved(self, outcome: str) -> None:
        pass

    def circuit_breaker_refused(self) -> None:
        pass


NULL_TELEMETRY = NullTelemetry()


def telemetry_for(
    target: str,
    meter_provider: metrics.MeterProvider | None,
    endpoint_limit: int,
    observe: Callable[[], Iterable[tuple[str, str, int, bool]]],
) -> Telemetry:
    provider = meter_provider or metrics.get_meter_provider()
    if meter_provider is None and not _sdk_configured(provider):
        return NULL_TELEMETRY
    return Telemetry(target, provider, endpoint_limit, observe)


def _context_reader() -> Callable[[], Any]:
    """A reader of OpenTelemetry's current context, the cheapest that is right.

    With OpenTelemetry's default runtime context, the context lives in one
    ``ContextVar``: its own ``get`` skips two Python calls on every attempt.
    Any other runtime context is read through the public call.
    """
    variable = getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(variable, contextvars.ContextVar):
        return variable.get
    return otel_context.get_current


current_context = _context_reader()


def trace_attempt(address: str, attempt: int) -> None:
    """On the caller's current span, if it records: which pod serves this attempt."""
    if not current_context():
        return  # no span at all (hot paths check current_context() before calling)
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event("grpclb.attempt", {ATTR_ENDPOINT: address, ATTR_ATTEMPT: attempt})


def trace_retry(code: grpc.StatusCode | None, delay: float | None) -> None:
    """On the caller's current span: why the call is retried, or why it is not."""
    span = trace.get_current_span()
    if span.is_recording():
        reason = code.name if code is not None else "UNKNOWN"
        if delay is None:
            span.add_event("grpclb.retry_refused", {ATTR_STATUS: reason})
        else:
            span.add_event("grpclb.retry", {ATTR_STATUS: reason, "grpclb.backoff_s": delay})
