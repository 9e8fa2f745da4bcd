"""multiprocessing: one grpclb channel per pool worker, made by the pool's initializer.

    python examples/multiprocessing_pool.py                      # 3 local pods
    python examples/multiprocessing_pool.py dns:///echo.default.svc.cluster.local:9000

With the ``fork`` start method (Linux's default before Python 3.14) workers inherit the
parent's memory but not working grpcio channels: a channel made in the parent raises
``ValueError`` in a worker. The initializer runs once in each worker and makes its
own. (With ``spawn`` or ``forkserver`` the same initializer works unchanged.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections import Counter

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc

channel: grpclb.Channel | None = None  # this worker's, set by init_worker


def init_worker(target: str) -> None:
    """Pool initializer: runs in each worker process, once, before its first task."""
    global channel
    channel = grpclb.channel(target)


def who(message: str) -> tuple[int, str]:
    """A task: (this worker's pid, the pod that served the call)."""
    assert channel is not None, "init_worker did not run in this process"
    reply = echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(message=message), timeout=5)
    return os.getpid(), reply.pod


def run(target: str, workers: int = 2, tasks: int = 20) -> Counter[tuple[int, str]]:
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=init_worker, initargs=(target,)) as pool:
        return Counter(pool.map(who, [str(i) for i in range(tasks)], chunksize=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    args = parser.parse_args()
    if args.target:
        served = run(args.target)
    else:
        from grpclb.testing import PodFleet

        with PodFleet(3) as fleet:  # a static ipv4: target: no DNS server needed
            served = run("ipv4:" + ",".join(fleet.addresses))
    for (pid, pod), count in sorted(served.items()):
        print(f"worker {pid}  pod {pod:>22}  {count:3d} calls")


if __name__ == "__main__":
    main()
