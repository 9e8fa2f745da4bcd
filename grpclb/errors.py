"""Errors grpclb raises.

A call that fails before it reaches any pod (no endpoints, the circuit breaker
is open) must look exactly like a failed grpc call to the caller: code written
against ``grpc.RpcError`` keeps working, whether it used a blocking call,
``with_call``, ``future`` or a streaming iterator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc


class ConfigError(ValueError):
    """A setting has a bad value; the message names the keyword or variable."""


CANCELLED_DETAILS = "Locally cancelled by application!"  # grpcio's words for a local cancel


class LocalRpcError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A call that ended inside grpclb, before any pod saw it.

    It is at once the raised error, the finished call and the completed
    future, and it iterates by raising itself, so each call style reports it
    the way grpcio would report a real failed call.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def __repr__(self) -> str:
        return f"<LocalRpcError {self._code.name}: {self._details!r}>"

    __str__ = __repr__

    # grpc.Call / grpc.RpcContext
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False  # grpcio's contract: False once the call has terminated

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> NoReturn:
        raise self

    def exception(self, timeout: float | None = None) -> LocalRpcError:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    # streaming responses
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> NoReturn:
        raise self

    def next(self) -> NoReturn:
        raise self


def cancelled_locally() -> LocalRpcError:
    """A call the application cancelled, as grpcio reports one."""
    return LocalRpcError(grpc.StatusCode.CANCELLED, CANCELLED_DETAILS)
