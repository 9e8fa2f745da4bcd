"""Test pods, DNS and PKI for grpclb's tests, demo and benchmarks.

Needs the ``testing`` extra (protobuf, grpcio-health-checking); ``TestPki``
also needs trustme. ``import grpclb`` alone never imports this package.

The names below load on first use: a process pod imports this package on its
way to ``_pod_main`` and should not pay for dnspython, which it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpclb.testing.dns import SERVICE_NAME, DnsmasqNotFound, DnsServer
    from grpclb.testing.pods import Pod, PodCounts, PodFleet, ProcessPod, ThreadPod
    from grpclb.testing.tls import TestPki

_EXPORTS = {
    "SERVICE_NAME": "dns",
    "DnsServer": "dns",
    "DnsmasqNotFound": "dns",
    "Pod": "pods",
    "PodCounts": "pods",
    "PodFleet": "pods",
    "ProcessPod": "pods",
    "ThreadPod": "pods",
    "TestPki": "tls",
}

__all__ = [
    "SERVICE_NAME",
    "DnsServer",
    "DnsmasqNotFound",
    "Pod",
    "PodCounts",
    "PodFleet",
    "ProcessPod",
    "TestPki",
    "ThreadPod",
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
