# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("message", "count", "sleep_ms")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SLEEP_MS_FIELD_NUMBER: _ClassVar[int]
    message: str
    count: int
    sleep_ms: int
    def __init__(
        self,
        message: _Optional[str] = ...,
        count: _Optional[int] = ...,
        sleep_ms: _Optional[int] = ...,
    ) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("pod", "message", "index")
    POD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    pod: str
    message: str
    index: int
    def __init__(
        self, pod: _Optional[str] = ..., message: _Optional[str] = ..., index: _Optional[int] = ...
    ) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Mode(_message.Message):
    __slots__ = ("mode", "delay_ms")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    delay_ms: int
    def __init__(self, mode: _Optional[str] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class PodStats(_message.Message):
    __slots__ = ("pod", "calls", "connections", "in_flight", "peers")
    POD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    pod: str
    calls: int
    connections: int
    in_flight: int
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        pod: _Optional[str] = ...,
        calls: _Optional[int] = ...,
        connections: _Optional[int] = ...,
        in_flight: _Optional[int] = ...,
        peers: _Optional[_Iterable[str]] = ...,
    ) -> None: ...
