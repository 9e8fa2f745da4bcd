"""py-spy sampling of a client process: where the Python time of a call goes, by package.

The sampled process is a child (``python -m benchmarks.sampling MODE CHANNEL
ADDRESS SECONDS``) that drives unary calls to one pod and prints how many it
made. py-spy records with ``--gil``, so a sample is a moment some thread held
the GIL: Python running, or C code that kept the GIL. Stdlib frames (locks,
contextlib, enum) count for the library that called them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REQUEST,
    ROOT,
)
from benchmarks.drive import unary

RATE_HZ = 400
DRIVER = "event loop, interpreter, driver loop"
# Leaf-to-root, the first frame from one of these decides the sample's owner.
# Frames of the driver (benchmarks/) and the stdlib are transparent: a sample whose stack
# has none of these is the event loop's, the interpreter's or the driver loop's own.
OWNERS = (
    ("grpclb/testing/", DRIVER),
    ("grpclb/", "grpclb"),
    ("opentelemetry/", "opentelemetry-api (called by grpclb)"),
    ("grpc/", "grpcio"),
    ("google/protobuf/", "protobuf"),
)


@dataclass
class Profile:
    calls: int
    samples: Counter[str] = field(default_factory=Counter)  # owner -> samples
    functions: Counter[str] = field(default_factory=Counter)  # grpclb function -> samples

    def share(self, owner: str) -> float:
        return self.samples[owner] / max(sum(self.samples.values()), 1)

    def function_share(self, function: str) -> float:
        return self.functions[function] / max(sum(self.samples.values()), 1)


def pyspy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if os.access(found, os.X_OK) else None


def _frame(text: str) -> tuple[str, str]:
    """``func (file.py:12)`` -> (func, file)."""
    name, _, where = text.rpartition(" (")
    return name, where.rsplit(":", 1)[0]


def parse(raw: str, calls: int) -> Profile:
    profile = Profile(calls)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "importlib" in stack or "_setup" in stack:
            continue  # start-up: imports, channel creation, waiting for the pod
        frames = [_frame(f) for f in stack.split(";") if f]
        owner, function = DRIVER, ""
        for _, path in reversed(frames):
            match = next((label for prefix, label in OWNERS if prefix in path), None)
            if match is not None:
                owner = match
                break
        for name, path in reversed(frames):
            if "grpclb/" in path and "grpclb/testing/" not in path:
                function = name
                break
        profile.samples[owner] += int(count)
        if owner.startswith(("grpclb", "opentelemetry")) and function:
            profile.functions[function] += int(count)
    return profile


def sample(mode: str, channel: str, address: str, seconds: float) -> Profile:
    """Run the child under py-spy; raise RuntimeError when py-spy cannot sample here."""
    tool = pyspy()
    if tool is None:
        raise RuntimeError("py-spy is not installed (the bench extra installs it)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="grpclb-bench-") as tmp:
        out = Path(tmp) / "samples.txt"
        child = [sys.executable, "-m", "benchmarks.sampling", mode, channel, address]
        command = [tool, "record", "--gil", "-r", str(RATE_HZ), "-f", "raw", "-o", str(out)]
        done = subprocess.run(
            [*command, "--", *child, str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env=env,
        )
        # py-spy's own messages share stdout with the child's one line: the call count.
        counts = [line for line in done.stdout.splitlines() if line.strip().isdigit()]
        if done.returncode != 0 or not out.exists() or not counts:
            raise RuntimeError(f"py-spy failed: {(done.stderr + done.stdout).strip()[-500:]}")
        return parse(out.read_text(), int(counts[-1]))


# --- the sampled child ------------------------------------------------------------------


def _setup(channel_kind: str, address: str, aio: bool) -> Any:
    import grpc
    import grpc.aio

    import grpclb
    import grpclb.aio
    from benchmarks.common import static_target, wait_ready

    if channel_kind == "plain":
        return grpc.aio.insecure_channel(address) if aio else grpc.insecure_channel(address)
    if aio:
        return grpclb.aio.channel(static_target([address]))
    channel = grpclb.channel(static_target([address]))
    wait_ready(channel, 1)
    return channel


def _sync_child(channel_kind: str, address: str, seconds: float) -> int:
    call = unary(_setup(channel_kind, address, False))
    calls, end = 0, time.perf_counter() + seconds  # warm-up included: its samples are too
    while time.perf_counter() < end:
        call(REQUEST, timeout=5)
        calls += 1
    return calls


async def _aio_child(channel_kind: str, address: str, seconds: float) -> int:
    channel = _setup(channel_kind, address, True)
    await asyncio.wait_for(channel.channel_ready(), 20)
    call = unary(channel)
    calls = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal calls
        while time.perf_counter() < end:
            await call(REQUEST, timeout=5)
            calls += 1

    await asyncio.gather(*(worker() for _ in range(100)))
    await channel.close()
    return calls


def main(argv: list[str]) -> int:
    mode, channel_kind, address, seconds = argv[0], argv[1], argv[2], float(argv[3])
    if mode == "sync":
        calls = _sync_child(channel_kind, address, seconds)
    else:
        calls = asyncio.run(_aio_child(channel_kind, address, seconds))
    print(calls, flush=True)
    os._exit(0)  # skip grpc's teardown: the samples are taken


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
