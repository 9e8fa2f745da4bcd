"""A pytest fixture for local pods.

Enable it in a test module or the root ``conftest.py`` with
``pytest_plugins = ["grpclb.testing.pytest_plugin"]`` (or ``-p grpclb.testing.pytest_plugin``).

``grpclb_local_pods(add_servicer, servicer, n=3, ...)`` starts pods for the test
(see ``grpclb.testing.local_pods``) and stops them after it, whatever it did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from grpclb.testing.local import LocalPods, local_pods

LocalPodsFactory = Callable[..., LocalPods]


@pytest.fixture
def grpclb_local_pods() -> Iterator[LocalPodsFactory]:
    """``grpclb_local_pods(add_servicer, servicer, n=3)`` -> LocalPods, stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(*args: Any, **kwargs: Any) -> LocalPods:
            return stack.enter_context(local_pods(*args, **kwargs))

        yield start
