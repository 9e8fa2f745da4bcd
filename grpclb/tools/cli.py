"""``grpclb``'s command line: the admin page a proxy has and a client library lacks.

With Envoy an operator reads ``/clusters`` to see which pods a proxy knows and
how it treats them. A balancer inside the client has no such page, so these
commands build the very channel an application would (same target, same
``GRPCLB_*`` environment, same settings) and print what it sees. Errors an
operator can act on (a name DNS does not know, a silent DNS server, a typo in
a setting) are one line on stderr and exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc

import grpclb
from grpclb.config.parsing import parse_duration
from grpclb.config.settings import SETTINGS, Setting, Settings
from grpclb.config.target import Target, parse_target
from grpclb.core.health import CHECK_METHOD, STATUS_NAMES, decode_status, encode_request
from grpclb.shell import dial_address
from grpclb.stats import ChannelStats

HEALTH_CHECK = CHECK_METHOD
HEALTH_STATUS = STATUS_NAMES
UNSETTLED = frozenset({"idle", "connecting"})
POLL_S = 0.02
STATE_COLORS = {"ready": "32", "connecting": "33", "idle": "33", "draining": "36"}
# Only the channel's own health and slow-start columns that say something are shown.
HEALTH_OFF = "disabled"


class CliError(Exception):
    """A failure the user can act on: reported as one line, never as a traceback."""


# --- formatting ------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """Short and stable, like kubectl's ages: 350ms, 12.3s, 4m05s, 2h03m, 1d02h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    if seconds < 3600:
        return f"{minutes}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def format_seconds(seconds: float) -> str:
    """A setting's duration exactly as a user would write it: 25ms, 5s, 5m."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[int] = (),
    indent: str = "",
    paint: Callable[[int, str, str], str] | None = None,
) -> str:
    """Columns padded to their widest cell; ``paint`` may colour a padded cell afterwards."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for n, row in enumerate([headers, *rows]):
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.rjust(width) if i in right else cell.ljust(width)
            cells.append(paint(i, cell, padded) if paint and n else padded)
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def endpoint_table(stats: ChannelStats, health: dict[str, str] | None = None) -> str:
    """The pods as Envoy's ``/clusters`` lists hosts: one row each, counters to the right.

    HEALTH is the channel's own health check (``health_check=true``), WEIGHT a slow
    start ramp in progress; CHECK is ``inspect --health``'s one-off answer.
    """
    headers = ["ADDRESS", "STATE", "IN_FLIGHT", "CALLS", "FAILURES", "EJECTIONS", "CONN_AGE"]
    watched = any(e.health != HEALTH_OFF for e in stats.endpoints)
    ramping = any(e.weight < 1.0 for e in stats.endpoints)
    headers += ["HEALTH"] * watched + ["WEIGHT"] * ramping + ["CHECK"] * (health is not None)
    rows = []
    for e in stats.endpoints:
        row = [e.address, e.state, str(e.in_flight), str(e.calls), str(e.failures)]
        row += [str(e.ejections), format_duration(e.connection_age)]
        row += [e.health] * watched + [f"{e.weight:.0%}"] * ramping
        if health is not None:
            row.append(health.get(e.address, "-"))
        rows.append(row)

    def paint(column: int, cell: str, padded: str) -> str:
        if column != 1:
            return padded
        return f"\x1b[{STATE_COLORS.get(cell, '31')}m{padded}\x1b[0m"

    ready = sum(1 for e in stats.endpoints if e.state == "ready")
    summary = [
        f"target  {stats.target}",
        f"policy  {stats.policy}   pods {len(stats.endpoints)} ({ready} ready)   "
        f"in flight {stats.in_flight}   calls {stats.calls}   failures {stats.failures}"
        + ("   PANIC" if stats.panic else ""),
        f"dns     {stats.resolutions} resolutions, {stats.resolution_failures} failed"
        + (f"; last: {stats.last_resolution_error}" if stats.last_resolution_error else ""),
    ]
    table = render_table(headers, rows, right=range(2, 7), paint=paint if _color() else None)
    return "\n".join([*summary, "", table if rows else "(no pods)"])


# --- grpc.health.v1 without protobuf: the CLI must work with grpclb's own dependencies ---


def encode_health_request(service: str) -> bytes:
    """HealthCheckRequest{service}, by the core's hand-written codec."""
    return encode_request(service)


def decode_health_status(data: bytes) -> str:
    """HealthCheckResponse.status by name, e.g. SERVING."""
    status = decode_status(data)
    return HEALTH_STATUS.get(status, str(status))


def check_health(target: Target, address: str, service: str, timeout: float) -> str:
    """One pod's own answer, on a separate connection that grpclb's counters never see."""
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    if not target.is_static:
        options.append(("grpc.default_authority", target.authority))  # as grpclb's calls carry
    with grpc.insecure_channel(dial_address(address), options=options) as channel:
        check = channel.unary_unary(HEALTH_CHECK, None, decode_health_status)
        try:
            return str(check(encode_health_request(service), timeout=timeout))
        except grpc.RpcError as error:
            return str(error.code().name)


def check_all(target: Target, stats: ChannelStats, service: str, timeout: float) -> dict[str, str]:
    addresses = [e.address for e in stats.endpoints]
    with futures.ThreadPoolExecutor(max(1, min(16, len(addresses)))) as pool:
        results = pool.map(lambda a: check_health(target, a, service, timeout), addresses)
        return dict(zip(addresses, results, strict=True))


def open_channel(
    target: str, overrides: dict[str, str], env_prefix: str | None = None
) -> grpclb.Channel:
    """A channel as an application would build it; a bad target or setting is a CliError.

    Settings are loaded here, not passed as keywords, so that ``--set options=...``
    is an unknown setting rather than grpclb.channel's own parameter.
    """
    try:
        settings = Settings.load(overrides, env_prefix=env_prefix)
        return grpclb.Channel(target, settings=settings)
    except grpclb.ConfigError as error:
        message = str(error)
        if message.startswith("keyword "):  # the user typed --set, not a keyword argument
            message = "--set " + message[len("keyword ") :]
        raise CliError(message) from None


def settle(channel: grpclb.Channel, timeout: float) -> ChannelStats:
    """Waits (bounded) for the first DNS answer and every pod's first connection attempt."""
    deadline = time.monotonic() + timeout
    while True:
        stats: ChannelStats = channel.stats()
        unsettled = [e for e in stats.endpoints if e.state in UNSETTLED or e.health == "pending"]
        if stats.resolutions and not unsettled:
            return stats
        if time.monotonic() >= deadline:
            return stats
        time.sleep(POLL_S)


def require_endpoints(stats: ChannelStats, timeout: float) -> None:
    if not stats.resolutions:
        raise CliError(f"timed out after {timeout:g}s waiting for a DNS answer for {stats.target}")
    if not stats.endpoints:
        why = stats.last_resolution_error or "DNS returned no addresses"
        raise CliError(f"no endpoints for {stats.target}: {why}")


def cmd_inspect(args: argparse.Namespace) -> int:
    with open_channel(args.target, dict(args.pairs), args.env_prefix) as channel:
        stats = settle(channel, args.timeout)
        require_endpoints(stats, args.timeout)
        health = None
        if args.health:
            target = parse_target(args.target)
            health = check_all(target, stats, args.health_service, args.timeout)
            stats = channel.stats()
        print(endpoint_table(stats, health), flush=True)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    method = args.probe
    request = encode_health_request("") if method == HEALTH_CHECK else b""
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    with open_channel(args.target, dict(args.pairs), args.env_prefix) as channel:
        settle(channel, args.timeout)
        probe = channel.unary_unary(method) if method else None
        n, sent, ok = 0, 0, 0
        try:
            while args.count is None or n < args.count:
                started = time.monotonic()
                if probe is not None:
                    pods = max(1, len(channel.stats().endpoints))
                    calls = [probe.future(request, timeout=args.probe_timeout) for _ in range(pods)]
                    sent += len(calls)
                    ok += sum(1 for call in calls if call.exception() is None)
                n += 1
                total = "" if args.count is None else f"/{args.count}"
                lines = [f"{clear}grpclb watch: refresh {n}{total} every {args.interval:g}s"]
                lines.append(endpoint_table(channel.stats()))
                if probe is not None:
                    lines.append(f"probes  {method}: {sent} sent, {ok} ok, {sent - ok} failed")
                print("\n".join(lines) + "\n", flush=True)
                if args.count is None or n < args.count:
                    time.sleep(max(0.0, started + args.interval - time.monotonic()))
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends
    return 0


def describe_default(setting: Setting) -> str:
    value = setting.default
    if value is None:
        return "off"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, frozenset):
        return ",".join(sorted(code.name for code in value))
    if isinstance(value, float) and _is_duration(setting):
        return format_seconds(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_duration(setting: Setting) -> bool:
    """SETTINGS has no type column; only duration parsers accept "1ms"."""
    try:
        return setting.parse("1ms") is not None
    except Exception:
        return False


def cmd_settings(args: argparse.Namespace) -> int:
    rows = [[s.name, s.env, describe_default(s), s.help] for s in SETTINGS]
    print(render_table(["NAME", "ENV", "DEFAULT", "MEANING"], rows), flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from grpclb.tools import demo  # the demo needs the testing extra; the other commands do not

    return demo.run(args.pods, args.calls)


# --- argument parsing ----------------------------------------------------------------------


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _duration_arg(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except Exception as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _probe_arg(text: str) -> str:
    if text != "health" and not (text.startswith("/") and "/" in text[1:]):
        raise argparse.ArgumentTypeError(
            f"expected 'health' or /package.Service/Method, not {text!r}"
        )
    return HEALTH_CHECK if text == "health" else text


def _setting_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().lower().replace("-", "_"), value


def _add_channel_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="dns:///host:port, dns://DNS_IP:PORT/host:port, ...")
    parser.add_argument(
        "--set",
        dest="pairs",
        action="append",
        default=[],
        type=_setting_arg,
        metavar="NAME=VALUE",
        help="a setting (see `grpclb settings`); repeatable; overrides GRPCLB_* variables",
    )
    parser.add_argument(
        "--env-prefix",
        metavar="PREFIX",
        help="read PREFIX + GRPCLB_* variables first, as a channel with env_prefix=PREFIX does",
    )
    help = "how long to wait for DNS and connections (default 5s)"
    parser.add_argument("--timeout", type=_duration_arg, default=5.0, help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpclb", description="Inspect grpclb's view of a headless service, or run the demo."
    )
    parser.add_argument("--version", action="version", version=f"grpclb {grpclb.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="plain grpcio vs grpclb, measured on local pods")
    demo.add_argument("--pods", type=_positive_int, default=5, help="pods to start (default 5)")
    demo.add_argument("--calls", type=_positive_int, default=1000, help="calls per act")
    demo.set_defaults(run=cmd_demo)

    inspect = commands.add_parser("inspect", help="resolve, connect and list every pod")
    _add_channel_args(inspect)
    inspect.add_argument("--health", action="store_true", help="ask each pod grpc.health.v1")
    inspect.add_argument("--health-service", default="", help="service name for --health")
    inspect.set_defaults(run=cmd_inspect)

    watch = commands.add_parser("watch", help="refresh the pod table every interval")
    _add_channel_args(watch)
    watch.add_argument("--interval", type=_duration_arg, default=1.0, help="default 1s")
    watch.add_argument("--count", type=_positive_int, help="refreshes (default: until Ctrl-C)")
    watch.add_argument(
        "--probe",
        type=_probe_arg,
        metavar="METHOD",
        help="each refresh, one call per pod through the channel: 'health' "
        "(grpc.health.v1 Check) or /package.Service/Method (sent an empty message)",
    )
    watch.add_argument("--probe-timeout", type=_duration_arg, default=1.0, help="default 1s")
    watch.set_defaults(run=cmd_watch)

    settings = commands.add_parser("settings", help="list every setting and its default")
    settings.set_defaults(run=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The command line is an application: it shows grpclb's warnings (a DNS failure, a
    # misspelled GRPCLB_ variable) on stderr, as Python's last-resort handler would, since
    # the library's NullHandler keeps them silent until someone configures logging.
    # basicConfig does nothing when the embedding program configured logging already.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0) return, not raise
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args.run(args))
    except CliError as error:
        print(f"grpclb {args.command}: error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"grpclb {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
