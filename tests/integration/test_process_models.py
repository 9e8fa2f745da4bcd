"""The process-model recipes (docs/process-models.md), run in real forked worker processes.

Each test forks workers with multiprocessing's ``fork`` start method, runs in each the
hook the recipe shows (gunicorn's ``post_fork``, a FastAPI lifespan, Celery's
``worker_process_init``, a Pool initializer), and makes calls from each; gunicorn also
runs for real. The asyncio recipe forks from a fresh interpreter, as uvicorn's master
never runs grpc.aio. Pods are local and static ``ipv4:`` targets need no DNS server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FORK = multiprocessing.get_context("fork")


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as if imported: pickle finds its functions by name
    spec.loader.exec_module(module)
    return module


def in_workers(work: Callable[[], Any], workers: int = 2, timeout: float = 30) -> list[Any]:
    """Fork ``workers`` processes, run ``work`` in each, return what each returned."""
    results: Any = FORK.Queue()

    def child() -> None:
        try:
            results.put(("ok", os.getpid(), work()))
        except BaseException as error:  # reported to the test, not lost in the child
            results.put(("error", os.getpid(), repr(error)))

    processes = [FORK.Process(target=child) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        found = [results.get(timeout=timeout) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert all(status == "ok" for status, _, _ in found), found
    assert len({pid for _, pid, _ in found}) == workers
    assert all(pid != os.getpid() for _, pid, _ in found)
    return [value for _, _, value in found]


@pytest.fixture
def target(pods, monkeypatch) -> str:
    # Pod processes: gRPC servers running in this process's threads while it forks can
    # leave the children's gRPC core broken (a crash in epoll was seen once in CI).
    fleet = pods(2, processes=True)
    value = "ipv4:" + ",".join(fleet.addresses)
    monkeypatch.setenv("ECHO_TARGET", value)
    return value


def test_gunicorn_post_fork_gives_each_worker_its_own_channel(target):
    # No channel is open in this process while it forks: with one open, grpcio in the
    # children can hang (seen here about once in three runs), which is the recipe's point.
    # tests/integration/test_channel.py checks that an inherited channel raises ValueError.
    example = load("gunicorn_app")

    def worker() -> list[bytes]:
        example.post_fork(server=None, worker=None)
        body = example.app({"QUERY_STRING": ""}, lambda status, headers: None)
        example.worker_exit(server=None, worker=None)
        return body

    for pid, pod in (b[0].decode().split() for b in in_workers(worker)):
        assert int(pid) != os.getpid() and pod in target


_FASTAPI_MASTER = """
import asyncio, json
from tests.integration.test_process_models import in_workers, load

example = load("fastapi_app")

async def serve():
    async with example.lifespan(example.app):
        return await example.who()

print(json.dumps(in_workers(lambda: asyncio.run(asyncio.wait_for(serve(), 20)))))
"""


def test_fastapi_lifespan_makes_the_aio_channel_in_the_workers_loop(target):
    # The workers fork from a master that never ran grpc.aio, as uvicorn's does. This
    # process has run grpc.aio in other tests, and grpc.aio is not fork-safe once started:
    # forked from here, a worker's gRPC core failed about once in ten suite runs.
    master = subprocess.run(
        [sys.executable, "-c", _FASTAPI_MASTER],
        cwd=EXAMPLES.parent,
        env={**os.environ, "ECHO_TARGET": target},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert master.returncode == 0, master.stderr[-2000:]
    replies = json.loads(master.stdout.strip().splitlines()[-1])
    assert len({r["pid"] for r in replies}) == 2  # in_workers: two workers, not the master
    assert all(r["pid"] != os.getpid() for r in replies)
    assert all(r["pod"] in target for r in replies)


def test_celery_worker_process_init_gives_each_worker_its_own_channel(target):
    example = load("celery_worker")

    def worker() -> tuple[int, str]:
        example.open_channel(sender=None)
        try:
            return example.who("hello")  # a task called directly runs in this process
        finally:
            example.close_channel(sender=None)

    replies = in_workers(worker)
    assert all(pid != os.getpid() and pod in target for pid, pod in replies)


def test_a_multiprocessing_pool_initializer_gives_each_worker_its_own_channel(target):
    example = load("multiprocessing_pool")
    served = example.run(target, workers=2, tasks=10)
    assert sum(served.values()) == 10
    assert all(pid != os.getpid() and pod in target for pid, pod in served)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_gunicorn_for_real_with_preload_and_two_workers(target):
    port = free_port()
    path = os.pathsep.join([str(EXAMPLES), *sys.path])
    env = {**os.environ, "ECHO_TARGET": target, "PYTHONPATH": path}
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--preload"]
    command += ["--bind", f"127.0.0.1:{port}", "gunicorn_app:app"]
    # As the recipe runs it: from examples/, where gunicorn finds gunicorn.conf.py.
    server = subprocess.Popen(command, env=env, cwd=EXAMPLES, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/?sleep_ms=200"

    def get() -> tuple[str, str]:
        with urllib.request.urlopen(url, timeout=10) as response:
            pid, pod = response.read().decode().split()
            return pid, pod

    try:
        deadline = time.monotonic() + 20
        while True:  # until gunicorn listens
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.05)
        pids: set[str] = set()
        with ThreadPoolExecutor(2) as pool:
            for _ in range(10):  # a busy sync worker accepts nothing: two at once use both
                for pid, pod in pool.map(lambda _: get(), range(2)):
                    pids.add(pid)
                    assert pod in target
                if len(pids) == 2:
                    break
        assert len(pids) == 2 and str(server.pid) not in pids
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
