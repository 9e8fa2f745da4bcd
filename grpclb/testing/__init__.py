"""Test pods, DNS and PKI for grpclb's tests, demo and benchmarks.

For users' own tests: ``local_pods`` (grpcio only) starts pods for their own
servicer and yields a static target; ``grpclb.testing.pytest_plugin`` wraps it in
a fixture. The rest needs the ``testing`` extra (protobuf,
grpcio-health-checking); ``TestPki`` also needs trustme. ``import grpclb``
alone never imports this package.

The names below load on first use: a process pod imports this package on its
way to ``_pod_main`` and should not pay for dnspython, which it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpclb.testing.dns import SERVICE_NAME, DnsmasqNotFound, DnsServer
    from grpclb.testing.local import LocalPods, local_pods
    from grpclb.testing.pipe import RequestPipe
    from grpclb.testing.pods import Pod, PodCounts, PodFleet, ProcessPod, ThreadPod
    from grpclb.testing.tls import TestPki

_EXPORTS = {
    "SERVICE_NAME": "dns",
    "DnsServer": "dns",
    "DnsmasqNotFound": "dns",
    "LocalPods": "local",
    "local_pods": "local",
    "Pod": "pods",
    "PodCounts": "pods",
    "PodFleet": "pods",
    "ProcessPod": "pods",
    "ThreadPod": "pods",
    "TestPki": "tls",
    "RequestPipe": "pipe",
}

__all__ = [
    "SERVICE_NAME",
    "DnsServer",
    "DnsmasqNotFound",
    "LocalPods",
    "Pod",
    "PodCounts",
    "PodFleet",
    "ProcessPod",
    "RequestPipe",
    "TestPki",
    "ThreadPod",
    "local_pods",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
