"""A request iterator fed while the call runs: the ping-pong shape of a bidi call."""

from __future__ import annotations

import queue
from collections.abc import Iterator

from grpclb.testing import echo_pb2


class RequestPipe:
    """Echo requests given one at a time, each after the answer to the one before.

    A blocked read gives up after ``timeout`` seconds (``queue.Empty``), so a
    test whose call never asks again fails instead of hanging.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self._queue: queue.Queue[echo_pb2.EchoRequest | None] = queue.Queue()
        self._timeout = timeout

    def add(self, message: str) -> None:
        self._queue.put(echo_pb2.EchoRequest(message=message))

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[echo_pb2.EchoRequest]:
        return self

    def __next__(self) -> echo_pb2.EchoRequest:
        item = self._queue.get(timeout=self._timeout)
        if item is None:
            raise StopIteration
        return item
