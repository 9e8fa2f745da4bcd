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

    def slow() -> Iterator[bytes]:
        yield b"a"
        inside.set()
        release.wait(5)
        yield b"b"

    buffer = RequestBuffer(slow())
    first = buffer.attempt()
    assert next(first) == b"a"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(next(first)))
    reader.start()
    assert inside.wait(5)
    second = buffer.attempt()  # starts while the first attempt's reader is inside
    release.set()
    reader.join(5)
    assert got == [b"b"]  # read by the ended attempt (grpcio drops it)...
    assert list(second) == [b"a", b"b"]  # ...and sent by the next one


def test_over_the_limit_the_call_is_committed_and_nothing_is_kept() -> None:
    buffer = RequestBuffer(iter([b"12345", b"67890", b"x"]), limit=8)
    first = buffer.attempt()
    assert next(first) == b"12345"
    assert not buffer.committed
    assert next(first) == b"67890"  # 10 bytes > 8
    assert buffer.committed
    assert list(first) == [b"x"]  # the committed attempt goes on


def test_a_read_by_an_ended_attempt_never_commits_the_next() -> None:
    buffer = RequestBuffer(iter([b"12345", b"67890", b"x"]), limit=8)
    first = buffer.attempt()
    assert next(first) == b"12345"
    # The ended attempt's reader was already past the generation check when the
    # next attempt started: what it reads, over the limit or not, is kept.
    view = buffer._kept
    ended = view.live
    view.new_view()
    view.keep(next(buffer._source), ended)
    assert not buffer.committed
    second = buffer._view(view.live)
    assert next(second) == b"12345"
    assert next(second) == b"67890"
    assert next(second) == b"x"  # the live attempt's own read over the limit commits
    assert buffer.committed


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
    assert message_size(object(), None) == 0


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
