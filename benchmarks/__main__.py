"""``python -m benchmarks [--quick] [--only NAME] [--out DIR]``: run, print, write the report."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

from benchmarks.common import (
    ROOT,
    Config,
    Section,
)
from benchmarks.drive import close_loop

# In the report's order; hotpath profiles what the overhead scenarios measured.
SCENARIOS = (
    "overhead",
    "native",
    "proxy",
    "hedging",
    "streams",
    "spread",
    "unequal",
    "failure",
    "hashing",
    "scale",
    "churn",
    "fleet",
    "idle",
    "hotpath",
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="grpclb's benchmark suite: every scenario against its baseline, one run.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 2 min)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these scenarios (repeat or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for benchmarks.md and its plots (default: docs/ for a full run, "
        "build/bench/ for --quick or --only, so a partial run never replaces the report)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace these scenarios' sections in the existing report "
        "(default docs/benchmarks.md) and keep the rest of it",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser.parse_args(argv)


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name}")


def _run_all(cfg: Config, names: list[str], sections: list[Section]) -> bool:
    """Run the scenarios in order; a failing one is reported, the others still run."""
    failed = False
    for name in names:
        module = _load(name)
        print(f"== {name}: {module.TITLE}", flush=True)
        t0 = time.perf_counter()
        try:
            section: Section = module.run(cfg, sections) if name == "hotpath" else module.run(cfg)
        except Exception:
            failed = True
            detail = traceback.format_exc()
            print(detail, file=sys.stderr, flush=True)
            section = Section(name, module.TITLE)
            section.notes.append(f"**This scenario failed:**\n\n```\n{detail.strip()}\n```")
        section.seconds = time.perf_counter() - t0
        sections.append(section)
        for target in section.targets:
            print(f"   {target.status}  {target.name}: {target.measured:.3f} ({target.rule})")
        print(f"   ({section.seconds:.0f} s)", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for name in SCENARIOS:
            print(f"{name:10} {_load(name).TITLE}")
        return 0
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    names = [n for n in SCENARIOS if not only or n in only]
    if args.update and not only:
        print("--update needs --only: a whole run writes the whole report")
        return 2
    partial = (args.quick or bool(only)) and not args.update
    out = (args.out or (ROOT / ("build/bench" if partial else "docs"))).resolve()
    if args.update and not (out / "benchmarks.md").is_file():
        print(f"--update: no report at {out / 'benchmarks.md'} to update")
        return 2
    cfg = Config(quick=args.quick, plot_dir=out / "benchmarks")

    from benchmarks import report  # the report, for a real run only (not --list)

    box = report.machine()
    started = time.perf_counter()
    sections: list[Section] = []
    try:
        failed = _run_all(cfg, names, sections)
    finally:
        close_loop()
    wall = time.perf_counter() - started
    command = "scripts/bench.sh" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    if args.update:
        note = (
            f" Measured apart from the rest of this page, by `{command}` on {box['Date']}; "
            f"load average (1/5/15 min) {box['Load average at start (1/5/15 min)']} at start."
        )
        previous = (out / "benchmarks.md").read_text()
        text = report.splice(previous, sections, SCENARIOS, run_note=note)
    else:
        text = report.render(sections, box, command=command, wall_seconds=wall, quick=args.quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(text)
    print(f"\nwrote {out / 'benchmarks.md'} in {wall / 60:.1f} min")
    print(report.table_md(report.summary_table(sections)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
