"""A request stream kept so that a retry can send it again (gRFC A6's retry buffer).

A request iterator is read once, but a retried client-streaming or
bidirectional call must send the same messages to its next pod. So the
caller's iterator is read through a ``RequestBuffer``: each attempt gets its
own view (``attempt()``), which first replays what earlier attempts read and
then reads on from the caller's iterator, keeping what it reads.

What is kept is bounded, as gRPC bounds it (``grpc.per_rpc_retry_buffer_size``,
256 KiB by default): once the messages read exceed ``limit`` bytes the call
is *committed*: nothing more is kept, and no attempt may follow the current
one (``CallRun.retry_delay`` asks ``committed``). A caller's iterator that
raises commits the call too: replaying it would only raise again.

Only the newest view is live. grpcio reads a request iterator from a thread
(sync) or a task (asyncio) of the attempt's own, which may still be inside
the caller's iterator when the attempt fails: what it reads then is kept for
the next attempt, and its next read ends its stream. The caller's iterator
is never read by two attempts at once (a lock), so a generator is safe.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

# gRPC's default per-call retry buffer (grpc.per_rpc_retry_buffer_size), in bytes.
DEFAULT_LIMIT = 256 * 1024


def message_size(message: Any, serializer: Callable[[Any], bytes] | None) -> int | None:
    """Bytes ``message`` takes on the wire: a protobuf's own count, else serialized.

    None when it cannot be told (its serializer raised, or it has none and is
    not bytes): grpcio reports that itself, as "Exception serializing request!".
    """
    if isinstance(message, (bytes, bytearray, memoryview)):
        return len(message)
    try:
        byte_size = getattr(message, "ByteSize", None)
        if byte_size is not None:
            return int(byte_size())
        if serializer is not None:
            return len(serializer(message))
    except Exception:
        return None
    return None


class KeptRequests:
    """What the views share: the messages read so far, or the end the caller's iterator reached.

    ``messages`` holds messages ``base`` onwards: those before ``base`` are let
    go once the call is committed and the one live view is past them.
    """

    def __init__(self, limit: int, serializer: Callable[[Any], bytes] | None) -> None:
        self.limit = limit
        self.serializer = serializer
        self.messages: list[Any] = []  # replayed to each new attempt, from ``base``
        self.base = 0
        self.read = 0  # messages read from the caller's iterator, kept or not
        self.size = 0
        self.ended = False  # the caller's iterator is exhausted
        self.error: BaseException | None = None  # what it raised, raised again to later views
        self.committed = False  # no further attempt: over the limit, or the iterator raised
        self.live = 0  # the generation of the one view that may still read

    def new_view(self) -> int:
        self.live += 1
        return self.live

    def keep(self, message: Any, generation: int) -> None:
        """Message ``read`` was read by the view of ``generation``: keep it as needed."""
        self.read += 1
        if self.committed:
            if generation == self.live:  # the live view reads on: nothing to keep
                self.base, self.messages = self.read, []
            else:
                # Read by an ended attempt's reader, inside the caller's iterator when the
                # call was committed (by a response): the live view has yet to send it.
                self.messages.append(message)
            return
        # The message that crosses the limit is kept too: a view still replaying when a
        # read commits the call can always reach the end of what was read.
        self.messages.append(message)
        size = message_size(message, self.serializer)
        self.size += self.limit + 1 if size is None else size  # (unknown: keep no more)
        if self.size > self.limit:
            self.committed = True  # A6: over the buffer limit, the call is committed

    def commit(self) -> None:
        """No attempt may follow (a response arrived, or the call ended): keep no more."""
        self.committed = True

    def let_go(self) -> None:
        """Drop what is kept: no view will replay it (the call is committed, past it)."""
        self.base, self.messages = self.base + len(self.messages), []

    def failed(self, error: BaseException) -> None:
        self.error = error
        self.committed = True

    def replayed(self, generation: int, index: int) -> tuple[bool, Any]:
        """(True, message) for a view ``index`` messages in, if it need not read on.

        Lock-free: a list grows by whole appends, so a view replays while another
        attempt's reader waits inside the caller's iterator (a ping-pong caller
        writes its next message only after the answer the replay brings).
        """
        if generation != self.live:
            return True, _END  # a view of an ended attempt: its stream ends
        messages, at = self.messages, index - self.base
        if 0 <= at < len(messages):
            return True, messages[at]
        if self.committed and messages:
            self.let_go()  # the live view is past them, and no attempt follows
        if self.error is not None:
            raise self.error
        if self.ended:
            return True, _END
        return False, None


_END = object()


class _Buffer:
    """What a call asks of its kept request stream, in either flavour."""

    _kept: KeptRequests

    committed = property(lambda self: self._kept.committed)
    ended = property(lambda self: self._kept.ended)  # the caller's iterator is exhausted

    def commit(self) -> None:
        self._kept.commit()


class RequestBuffer(_Buffer):
    """A sync request iterator, read once and replayed to each attempt."""

    def __init__(
        self,
        requests: Iterable[Any],
        limit: int = DEFAULT_LIMIT,
        serializer: Callable[[Any], bytes] | None = None,
    ) -> None:
        self._requests = requests
        self._source: Iterator[Any] | None = None  # iter(requests), on the first read
        self._kept = KeptRequests(limit, serializer)
        self._lock = threading.Lock()  # one reader of the caller's iterator at a time

    def attempt(self) -> Iterator[Any]:
        """The request stream of the next attempt; earlier attempts' streams end.

        Never waits for the lock: an ended attempt's reader may be inside the
        caller's iterator, for as long as that takes.
        """
        return self._view(self._kept.new_view())

    def _view(self, generation: int) -> Iterator[Any]:
        kept, index = self._kept, 0
        while True:
            done, message = kept.replayed(generation, index)
            if not done:
                with self._lock:
                    done, message = kept.replayed(generation, index)  # read meanwhile?
                    if not done:
                        try:
                            source = self._source
                            if source is None:  # (not iterable: raised where grpcio would)
                                source = self._source = iter(self._requests)
                            message = next(source)
                        except StopIteration:
                            kept.ended = True
                            return
                        except BaseException as error:
                            kept.failed(error)
                            raise
                        kept.keep(message, generation)
            if message is _END:
                return
            index += 1
            yield message


class AsyncRequestBuffer(_Buffer):
    """``RequestBuffer`` for an asyncio call's async iterator (grpc.aio's other request style).

    One view at a time reads the caller's iterator (an async generator refuses
    a second reader); another view that needs the next message waits for that
    read and takes the message from what is kept. No task is made per message:
    this is on the path of every message of a retryable stream.
    """

    def __init__(
        self,
        requests: AsyncIterable[Any],
        limit: int = DEFAULT_LIMIT,
        serializer: Callable[[Any], bytes] | None = None,
    ) -> None:
        self._source = requests.__aiter__()
        self._kept = KeptRequests(limit, serializer)
        self._reading = False
        self._waiters: list[asyncio.Future[None]] = []

    def attempt(self) -> AsyncIterator[Any]:
        return self._view(self._kept.new_view())

    async def _view(self, generation: int) -> AsyncIterator[Any]:
        kept, index = self._kept, 0
        while True:
            done, message = kept.replayed(generation, index)
            if not done:
                if self._reading:  # an ended attempt's writer is inside the caller's iterator
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    await waiter
                    continue  # what it read is kept: replayed above
                self._reading = True
                try:
                    message = await self._source.__anext__()
                except StopAsyncIteration:
                    kept.ended = True
                    return
                except BaseException as error:
                    kept.failed(error)
                    raise
                else:
                    kept.keep(message, generation)
                finally:
                    self._reading = False
                    if self._waiters:
                        self._wake()  # they find what was read kept, or the end
            if message is _END:
                return
            index += 1
            yield message

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
