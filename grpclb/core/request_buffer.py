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


def message_size(message: Any, serializer: Callable[[Any], bytes] | None) -> int:
    """Bytes ``message`` takes on the wire: a protobuf's own count, else serialized."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    if byte_size is not None:
        return int(byte_size())
    if serializer is not None:
        return len(serializer(message))
    return 0  # grpcio will refuse it (no serializer, not bytes): that attempt fails


class _Kept:
    """What the views share: the messages read so far, or the end the caller's iterator reached."""

    def __init__(self, limit: int, serializer: Callable[[Any], bytes] | None) -> None:
        self.limit = limit
        self.serializer = serializer
        self.messages: list[Any] = []  # replayed to each new attempt; never shrinks
        self.read = 0  # messages read from the caller's iterator, kept or not
        self.size = 0
        self.ended = False  # the caller's iterator is exhausted
        self.error: BaseException | None = None  # what it raised, raised again to later views
        self.committed = False  # no further attempt: over the limit, or the iterator raised
        self.live = 0  # the generation of the one view that may still read

    def new_view(self) -> int:
        self.live += 1
        return self.live

    def keep(self, message: Any) -> None:
        self.read += 1
        if self.committed:
            return  # the one attempt left reads on: nothing more is kept for another
        # The message that crosses the limit is kept too: a view still replaying when a
        # read commits the call can always reach the end of what was read.
        self.messages.append(message)
        self.size += message_size(message, self.serializer)
        if self.size > self.limit:
            self.committed = True  # A6: over the buffer limit, the call is committed

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
        if index < len(self.messages):
            return True, self.messages[index]
        if self.error is not None:
            raise self.error
        if self.ended:
            return True, _END
        return False, None


_END = object()


class RequestBuffer:
    """A sync request iterator, read once and replayed to each attempt."""

    committed = property(lambda self: self._kept.committed)

    def __init__(
        self,
        requests: Iterable[Any],
        limit: int = DEFAULT_LIMIT,
        serializer: Callable[[Any], bytes] | None = None,
    ) -> None:
        self._source = iter(requests)
        self._kept = _Kept(limit, serializer)
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
                            message = next(self._source)
                        except StopIteration:
                            kept.ended = True
                            return
                        except BaseException as error:
                            kept.failed(error)
                            raise
                        kept.keep(message)
            if message is _END:
                return
            index += 1
            yield message


class AsyncRequestBuffer:
    """``RequestBuffer`` for an asyncio call's async iterator (grpc.aio's other request style).

    A read of the caller's iterator is a task of its own, shared by the views
    that wait for it, until the call is committed: the attempt that started it
    may be cancelled, and its cancel must not reach into the caller's iterator,
    which the next attempt reads on.
    """

    committed = property(lambda self: self._kept.committed)

    def __init__(
        self,
        requests: AsyncIterable[Any],
        limit: int = DEFAULT_LIMIT,
        serializer: Callable[[Any], bytes] | None = None,
    ) -> None:
        self._source = requests.__aiter__()
        self._kept = _Kept(limit, serializer)
        self._reading: asyncio.Future[None] | None = None

    def attempt(self) -> AsyncIterator[Any]:
        return self._view(self._kept.new_view())

    async def _view(self, generation: int) -> AsyncIterator[Any]:
        kept, index = self._kept, 0
        while True:
            done, message = kept.replayed(generation, index)
            if not done:
                if kept.committed and self._reading is None:
                    # No attempt follows this one: read straight from the caller.
                    try:
                        message = await self._source.__anext__()
                    except StopAsyncIteration:
                        kept.ended = True
                        return
                    except BaseException as error:
                        kept.failed(error)
                        raise
                    kept.keep(message)
                else:
                    reading = self._reading
                    if reading is None:
                        reading = self._reading = asyncio.ensure_future(self._read_one())
                    await asyncio.shield(reading)
                    continue  # what was read is kept: replayed above
            if message is _END:
                return
            index += 1
            yield message

    async def _read_one(self) -> None:
        kept = self._kept
        try:
            message = await self._source.__anext__()
        except StopAsyncIteration:
            kept.ended = True
        except BaseException as error:  # raised again to every view that reaches it
            kept.failed(error)
        else:
            kept.keep(message)
        finally:
            self._reading = None
