"""The request stream kept for retries: replayed in order, read once, bounded (gRFC A6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from grpclb.core.request_buffer import AsyncRequestBuffer, RequestBuffer, message_size


def counted(items: list[bytes], reads: list[bytes]) -> Iterator[bytes]:
    for item in items:
        reads.append(item)
        yield item


def test_a_later_attempt_replays_what_was_read_then_reads_on() -> None:
    reads: list[bytes] = []
    buffer = RequestBuffer(counted([b"a", b"b", b"c", b"d"], reads))
    first = buffer.attempt()
    assert [next(first), next(first)] == [b"a", b"b"]
    second = buffer.attempt()
    assert list(second) == [b"a", b"b", b"c", b"d"]
    assert reads == [b"a", b"b", b"c", b"d"]  # the caller's iterator was read once
    assert list(buffer.attempt()) == [b"a", b"b", b"c", b"d"]
    assert not buffer.committed


def test_an_ended_attempts_stream_ends_when_a_new_one_starts() -> None:
    buffer = RequestBuffer(iter([b"a", b"b", b"c"]))
    first = buffer.attempt()
    assert next(first) == b"a"
    second = buffer.attempt()
    assert list(first) == []  # grpcio's reader of the failed attempt stops
    assert list(second) == [b"a", b"b", b"c"]


def test_a_message_an_ended_attempt_was_reading_is_kept_for_the_next() -> None:
    release, inside = threading.Event(), threading.Event()

    def paced() -> Iterator[bytes]:
        yield b"a"
        inside.set()
        release.wait(5)  # a ping-pong caller: its next message waits for an answer
        yield b"b"

    buffer = RequestBuffer(paced())
    first = buffer.attempt()
    assert next(first) == b"a"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(next(first)))
    reader.start()  # grpcio's reader of the first attempt, inside the caller's iterator
    assert inside.wait(5)
    second = buffer.attempt()
    replayed: list[bytes] = []
    replayer = threading.Thread(target=lambda: replayed.append(next(second)))
    replayer.start()
    replayer.join(5)
    assert replayed == [b"a"]  # replayed at once, not after the caller's next message
    release.set()
    reader.join(5)
    assert got == [b"b"]  # read by the ended attempt (grpcio drops it)...
    assert list(second) == [b"b"]  # ...and sent by the next one


def test_a_message_an_ended_reader_takes_after_a_response_commits_still_reaches_the_live_view() -> (
    None
):
    release, inside = threading.Event(), threading.Event()

    def paced() -> Iterator[bytes]:
        yield b"ping"
        inside.set()
        release.wait(5)
        yield b"pong"  # written once the answer to "ping" came, on the next attempt

    buffer = RequestBuffer(paced())
    first = buffer.attempt()
    assert next(first) == b"ping"
    reader = threading.Thread(target=lambda: next(first, None))
    reader.start()  # the first attempt's reader waits inside the caller's iterator
    assert inside.wait(5)
    second = buffer.attempt()
    assert next(second) == b"ping"  # replayed; the pod answers it...
    buffer.commit()  # ...and that answer commits the call (A6)
    release.set()
    reader.join(5)  # the ended reader took "pong" from the caller's iterator
    assert next(second) == b"pong"  # and the live attempt still sends it
    assert list(second) == []
    assert buffer._kept.messages == []  # then nothing is kept


def test_over_the_limit_the_call_is_committed_and_nothing_more_is_kept() -> None:
    buffer = RequestBuffer(iter([b"12345", b"67890", b"x"]), limit=8)
    first = buffer.attempt()
    assert next(first) == b"12345"
    assert not buffer.committed
    assert next(first) == b"67890"  # 10 bytes > 8
    assert buffer.committed
    assert buffer._kept.messages == [b"12345", b"67890"]  # (up to the one that crossed)
    assert list(first) == [b"x"]  # the committed attempt goes on
    assert buffer._kept.messages == []  # and what no attempt will replay is let go


def test_an_iterator_that_raises_commits_and_raises_again_for_later_attempts() -> None:
    def broken() -> Iterator[bytes]:
        yield b"a"
        raise ValueError("caller's bug")

    buffer = RequestBuffer(broken())
    first = buffer.attempt()
    assert next(first) == b"a"
    with pytest.raises(ValueError):
        next(first)
    assert buffer.committed  # a retry would only raise again
    second = buffer.attempt()
    assert next(second) == b"a"
    with pytest.raises(ValueError):
        next(second)


def test_message_sizes() -> None:
    class Proto:
        def ByteSize(self) -> int:
            return 7

    assert message_size(b"abc", None) == 3
    assert message_size(Proto(), None) == 7
    assert message_size("text", lambda s: s.encode() * 2) == 8
    assert message_size(object(), None) is None  # grpcio refuses it, and says so

    def refuses(message: object) -> bytes:
        raise TypeError(message)

    assert message_size("text", refuses) is None
    buffer = RequestBuffer(iter(["a", "b"]), limit=100, serializer=refuses)
    assert list(buffer.attempt()) == ["a", "b"]  # sent on: grpcio reports the error
    assert buffer.committed  # and none is kept for a retry


def test_async_iterators_are_replayed_too() -> None:
    reads: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        for item in (b"a", b"b", b"c"):
            reads.append(1)
            yield item

    async def scenario() -> tuple[list[bytes], list[bytes], bool]:
        buffer = AsyncRequestBuffer(source(), limit=2)
        first = buffer.attempt()
        head = [await first.__anext__()]
        second = buffer.attempt()
        assert [m async for m in first] == []  # ended
        rest = [m async for m in second]
        return head, rest, buffer.committed

    head, rest, committed = asyncio.run(scenario())
    assert (head, rest, committed) == ([b"a"], [b"a", b"b", b"c"], True)
    assert len(reads) == 3


def test_an_async_view_replays_while_another_waits_inside_the_callers_iterator() -> None:
    async def scenario() -> list[bytes]:
        more = asyncio.Event()

        async def paced() -> AsyncIterator[bytes]:
            yield b"a"
            await more.wait()  # the caller writes again only after an answer
            yield b"b"

        buffer = AsyncRequestBuffer(paced())
        first = buffer.attempt()
        assert await first.__anext__() == b"a"
        stuck = asyncio.ensure_future(first.__anext__())  # the ended attempt's writer
        await asyncio.sleep(0)
        second = buffer.attempt()
        head = await asyncio.wait_for(second.__anext__(), 5)  # replayed at once
        waiting = asyncio.ensure_future(second.__anext__())  # the next: read by the other
        await asyncio.sleep(0)
        more.set()
        rest = [await asyncio.wait_for(waiting, 5)] + [m async for m in second]
        assert await stuck == b"b"  # read by the ended attempt, which drops it
        assert [m async for m in first] == []
        return [head, *rest]

    assert asyncio.run(scenario()) == [b"a", b"b"]
