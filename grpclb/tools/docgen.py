"""The configuration reference in ``docs/configuration.md``, generated from ``SETTINGS``.

``python -m grpclb.tools.docgen`` rewrites the table between the markers
``<!-- settings:begin -->`` and ``<!-- settings:end -->``; ``--check`` only
compares and exits 1 when the file is stale, so a test (or CI) can tell that
the docs drifted from the code. Everything in the table comes from the code:
names, variables and defaults from ``SETTINGS``, types from the ``Settings``
dataclass' annotations, bounds and choices from each setting's own parser.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import grpc

from grpclb.config.service_config import ServiceConfig
from grpclb.config.settings import SETTINGS, Setting, Settings

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
HEADERS = ("Setting", "Environment variable", "Type", "Default", "Meaning", "Reference")
_AT_LEAST = re.compile(r"at least (-?[\d.]+)s?(?: and at most (-?[\d.]+))?")
_BETWEEN = re.compile(r"between (-?[\d.]+) and (-?[\d.]+)")


def _complaint(setting: Setting, raw: object) -> str | None:
    """What the setting's parser says about ``raw``; None when it accepts it."""
    try:
        setting.parse(raw)
    except Exception as error:
        return str(error)
    return None


def _hint(setting: Setting) -> tuple[object, bool]:
    """The field's type without ``None``, and whether ``None`` (off) is allowed."""
    hint = typing.get_type_hints(Settings)[setting.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), len(rest) < len(args)
    return hint, False


def is_duration(setting: Setting) -> bool:
    """Durations are floats whose parser accepts a unit, as in "250ms"."""
    return _hint(setting)[0] is float and _complaint(setting, "250ms") is None


def _bounds(setting: Setting) -> tuple[str, str | None] | None:
    """(minimum, maximum or None) as the parser states them for a value far too small."""
    message = _complaint(setting, -(10**15)) or ""
    found = _BETWEEN.search(message) or _AT_LEAST.search(message)
    return (found.group(1), found.group(2)) if found else None


def _range(setting: Setting, optional: bool) -> str:
    bounds = _bounds(setting)
    if bounds is None:
        return ""
    low, high = bounds
    if optional and low == "0":
        low = "1"  # 0 itself means off
    return f" {low} to {high}" if high is not None else f" ≥ {low}"


def describe_type(setting: Setting) -> str:
    """The type and format column: what a keyword or a variable may hold."""
    base, optional = _hint(setting)
    off = ", or `off`" if optional else ""
    if base is ServiceConfig:
        return "gRPC service config: JSON text, or a dict as keyword" + off
    if base is bool:
        return "boolean"
    if base is int:
        return "integer" + _range(setting, optional) + (", `0` or `off` = off" if optional else "")
    if base is float:
        if is_duration(setting):
            return "duration" + (", `0` or `off` = off" if optional else " > 0")
        return "number" + _range(setting, optional)
    if typing.get_origin(base) is frozenset:
        return "status code names, comma-separated"
    if base is str:
        message = _complaint(setting, "\x00") or ""
        _, found, allowed = message.partition("allowed values are: ")
        if found:
            return "one of " + ", ".join(f"`{a}`" for a in allowed.split(", "))
        return "string" + off
    return str(base)


def format_seconds(seconds: float) -> str:
    """A duration as a person writes it: 25ms, 5s, 5m."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def format_default(setting: Setting) -> str:
    value = setting.default
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        codes = sorted(value, key=lambda code: int(code.value[0]))
        return ",".join(code.name for code in codes if isinstance(code, grpc.StatusCode))
    if isinstance(value, float):
        return format_seconds(value) if is_duration(setting) else f"{value:g}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render_table(settings: Sequence[Setting] = SETTINGS) -> str:
    """The Markdown table, one row per setting, in ``SETTINGS`` order."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for s in settings:
        row = [
            f"`{s.name}`",
            f"`{s.env}`",
            describe_type(s),
            f"`{format_default(s)}`",
            s.help,
            s.reference,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def block(settings: Sequence[Setting] = SETTINGS) -> str:
    """What goes between the markers, markers included."""
    note = (
        "<!-- Generated from grpclb.config.settings.SETTINGS by `python -m grpclb.tools.docgen`; "
        "edits between these markers are overwritten. -->"
    )
    return f"{BEGIN}\n{note}\n\n{render_table(settings)}\n\n{END}"


def splice(text: str, settings: Sequence[Setting] = SETTINGS) -> str:
    """``text`` with its generated block replaced; ValueError when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"expected {BEGIN} ... {END} in the file")
    return text[:start] + block(settings) + text[end + len(END) :]


def is_current(text: str, settings: Sequence[Setting] = SETTINGS) -> bool:
    return splice(text, settings) == text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpclb.tools.docgen",
        description="Regenerate the configuration reference from grpclb.config.settings.SETTINGS.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the Markdown file")
    args = parser.parse_args(argv)
    try:
        text = args.file.read_text(encoding="utf-8")
        updated = splice(text)
    except (OSError, ValueError) as error:
        print(f"docgen: {args.file}: {error}", file=sys.stderr)
        return 2
    if updated == text:
        print(f"docgen: {args.file} is up to date")
        return 0
    if args.check:
        print(f"docgen: {args.file} is stale; run: python -m grpclb.tools.docgen", file=sys.stderr)
        return 1
    args.file.write_text(updated, encoding="utf-8")
    print(f"docgen: {args.file} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
