"""Setting values: how a keyword argument or an environment string becomes a typed value.

Each parser accepts what a person would type in either place (``5``, ``"5s"``,
``"250ms"``, ``"off"``, ``"UNAVAILABLE,INTERNAL"``) and raises ``Invalid``
with a sentence saying what is allowed; ``Settings.load`` adds which keyword
or variable the value came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import grpc

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_OFF_WORDS = ("off", "none", "disabled", "")


class Invalid(Exception):
    """A parser's complaint, turned into a ConfigError that names the source."""


# --- value parsers: raw (keyword value or environment string) -> typed value ---


def parse_duration(raw: object) -> float:
    """Seconds from a number or a Go-style string such as "250ms", "5s", "1m30s"."""
    if isinstance(raw, bool):
        raise Invalid("expected a duration such as 5, 0.25, '250ms', '5s' or '1m'")
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        text = str(raw).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise Invalid(
                    "expected a duration such as 5, 0.25, '250ms', '5s' or '1m'"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise Invalid("a duration must be a finite number of seconds >= 0")
    return seconds


def is_off(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip().lower() in _OFF_WORDS)


def duration(minimum: float = 0.0, optional: bool = False) -> Callable[[object], float | None]:
    def parse(raw: object) -> float | None:
        if optional and is_off(raw):
            return None
        seconds = parse_duration(raw)
        if optional and seconds == 0:
            return None  # 0 means off, whether typed as 0, "0" or "0s"
        if seconds < minimum or seconds == 0:
            raise Invalid(f"must be at least {minimum:g}s" if minimum else "must be > 0")
        return seconds

    return parse


def integer(
    minimum: int, maximum: int | None = None, optional: bool = False, zero_is_off: bool = True
) -> Callable[..., Any]:
    def parse(raw: object) -> int | None:
        if optional and is_off(raw):
            return None
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise Invalid("expected a whole number")
        try:
            value: int = int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise Invalid("expected a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise Invalid(f"must be at least {minimum}{upper}")
        if optional and zero_is_off and value == 0:
            return None  # 0 means off, from a keyword or a variable alike
        return value

    return parse


def number(minimum: float, maximum: float) -> Callable[[object], float]:
    def parse(raw: object) -> float:
        if isinstance(raw, bool):
            raise Invalid("expected a number")
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise Invalid("expected a number") from None
        if not minimum <= value <= maximum:
            raise Invalid(f"must be between {minimum:g} and {maximum:g}")
        return value

    return parse


def boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise Invalid("expected true or false (1/0, yes/no, on/off)")


def choice(*allowed: str) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        value = str(raw).strip().lower()
        if value not in allowed:
            raise Invalid(f"allowed values are: {', '.join(allowed)}")
        return value

    return parse


def metadata_key(raw: object) -> str | None:
    if is_off(raw):
        return None
    key = str(raw).strip().lower()  # gRPC metadata keys are lower-case on the wire
    if not re.fullmatch(r"[0-9a-z_.\-]+", key) or key.endswith("-bin"):
        raise Invalid("expected an ASCII metadata key such as 'x-user-id' (not a -bin key)")
    return key


def service_name(raw: object) -> str:
    """A grpc.health.v1 service name: printable ASCII, no spaces ("" is the whole server)."""
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise Invalid("expected a service name such as 'my.package.MyService', or ''")
    name = raw.strip()
    if not re.fullmatch(r"[\x21-\x7e]*", name):
        raise Invalid("expected printable ASCII without spaces, e.g. 'my.package.MyService'")
    return name


def file_path(raw: object) -> str | None:
    """A file's path, or None for off; whether it exists is checked each time it is read."""
    if is_off(raw):
        return None
    if not isinstance(raw, str | os.PathLike):
        raise Invalid("expected a file path such as '/etc/hosts', or 'off'")
    path = os.fspath(raw)
    if not isinstance(path, str) or "\x00" in path:
        raise Invalid("expected a file path as text, without NUL characters, or 'off'")
    path = path.strip()
    if not os.path.isabs(path):
        # It is read in the background, long after the working directory may have changed.
        raise Invalid("expected an absolute path such as '/etc/hosts', or 'off'")
    return path


def status_codes(raw: object) -> frozenset[grpc.StatusCode]:
    if isinstance(raw, str):
        names: list[object] = list(raw.split(","))
    elif isinstance(raw, grpc.StatusCode):
        names = [raw]
    elif isinstance(raw, list | tuple | set | frozenset):
        names = list(raw)
    else:
        raise Invalid("expected status code names, e.g. 'UNAVAILABLE,INTERNAL', or a list")
    codes = set()
    for name in names:
        if isinstance(name, grpc.StatusCode):
            codes.add(name)
            continue
        text = str(name).strip().upper()
        if not text:
            continue
        try:
            codes.add(grpc.StatusCode[text])
        except KeyError:
            allowed = ", ".join(c.name for c in grpc.StatusCode)
            raise Invalid(f"unknown status code {text!r}; allowed values are: {allowed}") from None
    if grpc.StatusCode.OK in codes:
        raise Invalid("OK cannot be a failure or retry code")
    return frozenset(codes)
