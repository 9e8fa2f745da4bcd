"""Reading a service config's JSON as gRPC reads it: strict text, typed values, named paths.

gRPC parses service configs with its own JSON reader and proto-JSON rules, and
grpclb refuses what that refuses, naming the JSON path: a key given twice in one
object and bare ``NaN``/``Infinity`` tokens (neither is JSON; C core refuses
both), numbers outside their field's proto type, numbers given as strings that
are not ASCII JSON numbers, durations that are not proto-JSON ``Duration``
strings, and status-code names not written as gRPC writes them (upper case).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NoReturn

import grpc

from grpclb.errors import ConfigError

UINT32_MAX = 2**32 - 1  # the proto type of most of gRPC's counts and percentages
# google.protobuf.Duration: up to 315,576,000,000 whole seconds, nanosecond precision;
# "+1.5s" is accepted as grpc-go accepts it. [0-9], not \d: \d matches any Unicode digit.
_DURATION = re.compile(r"([+-])?([0-9]*)(?:\.([0-9]{0,9}))?s")
_MAX_DURATION_S = 315_576_000_000
# A number given as a string: JSON's number syntax in ASCII (float() would also take
# "1_0", "nan", "inf" and non-ASCII digits such as U+FF13), with an optional "+".
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ASCII_SPACE = " \t\r\n"
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_DURATION_HINT = 'must be a duration string such as "0.1s" or "1.5s"'


class Reader:
    """Typed reads of JSON values that fail with a ConfigError naming the path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str, value: object = None, show: bool = True) -> NoReturn:
        got = f" (got {json.dumps(value, sort_keys=True)})" if show else ""
        raise ConfigError(f"{self.where}: {path}: {message}{got}")

    def loads(self, text: str) -> object:
        """JSON text as C core reads it: a repeated key or a NaN/Infinity token is refused."""
        try:
            document = json.loads(text, object_pairs_hook=_object, parse_constant=_NonFinite)
        except ValueError as error:
            raise ConfigError(f"{self.where}: not valid JSON: {error}") from None
        except RecursionError:
            raise ConfigError(f"{self.where}: not valid JSON: nested too deeply") from None
        flaw = _first_flaw(document)
        if flaw is not None:
            self.fail(*flaw, show=False)
        return document

    def mapping(self, path: str, value: object) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, "must be a JSON object", value)
        return value

    def array(self, path: str, value: object) -> list[Any]:
        if not isinstance(value, list):
            self.fail(path, "must be a JSON array", value)
        return value

    def string(self, path: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(path, "must be a string", value)
        return value

    def boolean(self, path: str, value: object) -> bool:
        if not isinstance(value, bool):
            self.fail(path, "must be true or false", value)
        return value

    def number(self, path: str, value: object) -> float:
        """A finite JSON number, or a string holding one (proto JSON accepts both)."""
        number = float(self._exact(path, value))
        if not math.isfinite(number):  # a finite decimal too large for a float
            self.fail(path, "must be a finite number", value)
        return number

    def integer(self, path: str, value: object, minimum: int, maximum: int, what: str = "") -> int:
        """A whole number (int, integral float or numeric string) in [minimum, maximum].

        Compared exactly, so 4294967296 is not taken for a uint32 by rounding, and
        "1e999999999" is refused before it becomes an int; ``what`` replaces the
        message for a value that is not whole or is below ``minimum``.
        """
        exact = self._exact(path, value)
        if exact != exact.to_integral_value() or exact < minimum:
            self.fail(path, what or f"must be an integer of at least {minimum}", value)
        if exact > maximum:
            self.fail(path, f"must be at most {maximum}", value)
        return int(exact)

    def percent(self, path: str, value: object) -> int:
        number = self.integer(path, value, 0, UINT32_MAX, "must be an integer from 0 to 100")
        if number > 100:
            self.fail(path, "must be an integer from 0 to 100", value)
        return number

    def duration(self, path: str, value: object, positive: bool = False) -> float:
        """Seconds from a proto-JSON Duration string such as "0.1s" or "1.5s"."""
        if not isinstance(value, str):
            self.fail(path, _DURATION_HINT, value)
        found = _DURATION.fullmatch(value)
        if found is None or not (found.group(2) or found.group(3)):
            self.fail(path, _DURATION_HINT, value)
        sign, whole, fraction = found.groups()
        seconds = int(whole or 0) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
        if sign == "-" and seconds:
            self.fail(path, "must not be negative", value)
        if int(whole or 0) > _MAX_DURATION_S:  # the range is on whole seconds, as C core's
            self.fail(path, f"must be at most {_MAX_DURATION_S}.999999999s", value)
        if positive and seconds == 0:
            self.fail(path, "must be greater than 0", value)
        return seconds

    def status_codes(self, path: str, value: object) -> frozenset[grpc.StatusCode]:
        """Status codes by name ("UNAVAILABLE") or number (14), as gRPC accepts them.

        Names are matched exactly: C core, grpc-go and grpc-java all refuse "unavailable".
        """
        names = grpc.StatusCode.__members__
        codes = set()
        for i, item in enumerate(self.array(path, value)):
            if isinstance(item, str) and item in names:
                codes.add(names[item])
            elif isinstance(item, int) and not isinstance(item, bool) and item in _CODES_BY_NUMBER:
                codes.add(_CODES_BY_NUMBER[item])
            else:
                message = f"must be a status code name ({', '.join(names)}) or 0-16"
                if isinstance(item, str) and item.isascii() and item.upper() in names:
                    message += "; status code names are upper case"
                self.fail(f"{path}[{i}]", message, item)
        return frozenset(codes)

    def _exact(self, path: str, value: object) -> Decimal:
        """The finite number ``value`` holds, exactly; a string must be ASCII JSON syntax."""
        exact = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            exact = Decimal(value)
        elif isinstance(value, str) and _NUMBER.fullmatch(text := value.strip(_ASCII_SPACE)):
            exact = Decimal(text)
        if exact is None:
            self.fail(path, "must be a number", value)
        if not exact.is_finite():
            self.fail(path, "must be a finite number", value)
        return exact


# --- strict JSON text: found while parsing, reported with their path afterwards -----------


class _Repeated(dict[str, Any]):
    """An object that gave ``key`` more than once."""

    key = ""


class _NonFinite:
    """Where a bare NaN, Infinity or -Infinity token stood."""

    def __init__(self, token: str) -> None:
        self.token = token


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            repeated = _Repeated(found)
            repeated.key = key
            return repeated
        seen.add(key)
    return found  # not reached: a shorter dict means a key came twice


def _first_flaw(document: object) -> tuple[str, str] | None:
    """(path, message) of the first repeated key or non-finite token, in document order."""
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            return path or "(top level)", f"{value.token} is not JSON; numbers must be finite"
        if isinstance(value, _Repeated):
            key_path = f"{path}.{value.key}" if path else value.key
            return key_path, "duplicate key; a JSON object may give each key once"
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None
