"""Mistakes are reported when the channel is created, exactly when plain grpcio reports them.

Pod channels are created later, when DNS answers, so grpclb asks grpcio to
judge the same credentials and options at creation. Each row is tried on a
plain grpcio channel and on grpclb's: both raise at creation, or neither does.
The target is a static loopback address, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio

NOWHERE = "127.0.0.1:1"
_CALL = grpc.access_token_call_credentials("token")

ROWS: list[tuple[str, dict[str, Any]]] = [
    # credentials
    ("call credentials as credentials", {"credentials": _CALL}),
    ("a string as credentials", {"credentials": "token"}),
    ("TLS credentials", {"credentials": grpc.ssl_channel_credentials()}),
    (
        "TLS with call credentials",
        {"credentials": grpc.composite_channel_credentials(grpc.ssl_channel_credentials(), _CALL)},
    ),
    ("local credentials", {"credentials": grpc.local_channel_credentials()}),
    # options
    ("an option valued None", {"options": [("grpc.max_receive_message_length", None)]}),
    ("an option valued object()", {"options": [("grpc.primary_user_agent", object())]}),
    ("an option named by an int", {"options": [(5, 1)]}),
    ("an option of three parts", {"options": [("grpc.keepalive_time_ms", 1, 2)]}),
    ("an int option past 64 bits", {"options": [("grpc.max_receive_message_length", 2**70)]}),
    ("options as a dict", {"options": {"grpc.keepalive_time_ms": 1000}}),
    ("options as a str", {"options": "grpc.keepalive_time_ms"}),
    ("options not iterable", {"options": 5}),
    ("options as None", {"options": None}),
    ("good options", {"options": [("grpc.keepalive_time_ms", 10_000)]}),
    # grpcio accepts these at creation (core logs the bad value and ignores it)
    ("an int option valued 'abc'", {"options": [("grpc.max_receive_message_length", "abc")]}),
    ("an option valued 1.5", {"options": [("grpc.max_receive_message_length", 1.5)]}),
    ("bad option with TLS", {"credentials": grpc.ssl_channel_credentials(), "options": [(1, 1)]}),
]
IDS = [name for name, _ in ROWS]


def plain_grpcio_refuses(kind: str, arguments: dict[str, Any]) -> bool:
    credentials = arguments.get("credentials")
    options = arguments.get("options", ())
    try:
        if kind == "sync":
            if credentials is None:
                grpc.insecure_channel(NOWHERE, options=options).close()
            else:
                grpc.secure_channel(NOWHERE, credentials, options=options).close()
        else:

            async def create() -> None:
                if credentials is None:
                    channel = grpc.aio.insecure_channel(NOWHERE, options=options)
                else:
                    channel = grpc.aio.secure_channel(NOWHERE, credentials, options=options)
                await channel.close()

            asyncio.run(create())
    except Exception:
        return True
    return False


@pytest.mark.parametrize(("name", "arguments"), ROWS, ids=IDS)
def test_sync_channel_refuses_at_creation_what_grpcio_refuses(
    name: str, arguments: dict[str, Any]
) -> None:
    refused = plain_grpcio_refuses("sync", arguments)
    try:
        grpclb.channel(NOWHERE, **arguments).close()
    except grpclb.ConfigError as exc:
        assert refused, f"grpclb refused what grpcio accepts: {exc}"
        keyword = "credentials" if name.endswith("credentials") else "options"
        assert f"keyword {keyword}=" in str(exc)
        assert "grpcio refuses it" in str(exc)
    else:
        assert not refused, "grpclb accepted at creation what grpcio refuses"


# grpc.aio itself, given call credentials, fails again when the half-made channel is freed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("name", "arguments"), ROWS, ids=IDS)
def test_aio_channel_refuses_at_creation_what_grpc_aio_refuses(
    name: str, arguments: dict[str, Any]
) -> None:
    refused = plain_grpcio_refuses("aio", arguments)

    async def create() -> None:
        channel = grpclb.aio.channel(NOWHERE, **arguments)
        await channel.close()

    try:
        asyncio.run(create())
    except grpclb.ConfigError:
        assert refused, "grpclb.aio refused what grpc.aio accepts"
    else:
        assert not refused, "grpclb.aio accepted at creation what grpc.aio refuses"


class _Interceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


@pytest.mark.parametrize(
    ("interceptors", "refused"),
    [
        ([_Interceptor()], False),
        ([], False),
        (None, False),
        ([object()], True),
        ([_Interceptor(), "not one"], True),
        (_Interceptor(), True),  # one interceptor, not a sequence of them
    ],
    ids=["an interceptor", "none", "None", "an object", "a str among them", "not a sequence"],
)
def test_aio_interceptors_are_checked_at_creation_as_grpc_aio_does(
    interceptors: Any, refused: bool
) -> None:
    async def plain() -> None:
        await grpc.aio.insecure_channel(NOWHERE, interceptors=interceptors).close()

    try:
        asyncio.run(plain())
    except Exception:
        grpc_refused = True
    else:
        grpc_refused = False
    assert grpc_refused == refused

    if refused:
        with pytest.raises(grpclb.ConfigError, match="interceptors"):
            grpclb.aio.channel(NOWHERE, interceptors=interceptors)
    else:
        grpclb.aio.channel(NOWHERE, interceptors=interceptors)  # started by nothing: no close


def test_the_error_says_how_to_pass_call_credentials() -> None:
    with pytest.raises(grpclb.ConfigError) as info:
        grpclb.channel(NOWHERE, credentials=_CALL)
    assert "grpc.composite_channel_credentials" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)  # grpcio's own words, chained
