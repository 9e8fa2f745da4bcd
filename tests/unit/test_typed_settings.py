"""Settings are typed for mypy and IDEs (PEP 692), and the types follow the table.

``ChannelSettings`` is written by hand, so a setting added to ``SETTINGS`` without it
(or removed from one only) fails here; mypy run on a small program shows that a
misspelled keyword or a wrongly typed value is an error where it is written, and a
correct call is not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import grpclb
from grpclb.config.settings import POLICIES, SETTINGS
from grpclb.config.typed import ChannelSettings, Policy

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
import grpc
import grpclb
import grpclb.aio

TARGET = "ipv4:127.0.0.1:50051"
grpclb.channel(TARGET, policy="round_robin", retries=3, max_connection_age="30s")
grpclb.channel(TARGET, policy="ring_hash", hash_key="x-user-id", dns_timeout=0.5)
grpclb.channel(TARGET, retry_codes=[grpc.StatusCode.UNAVAILABLE, "INTERNAL"], max_requests=None)
grpclb.channel(TARGET, env_prefix="PAYMENTS_", failure_codes="UNAVAILABLE,INTERNAL")
settings: grpclb.ChannelSettings = {"policy": "random", "choice_count": 3}
grpclb.channel(TARGET, **settings)
grpclb.aio.channel(TARGET, policy="maglev", hash_key="k", max_connection_age_grace=None)
"""

BAD = """
import grpclb
import grpclb.aio

TARGET = "ipv4:127.0.0.1:50051"
grpclb.channel(TARGET, polcy="round_robin")  # line 6
grpclb.channel(TARGET, retries="three")  # line 7
grpclb.channel(TARGET, policy="lest_request")  # line 8
grpclb.aio.channel(TARGET, dns_refresh_intervl=5)  # line 9
"""


def test_the_typed_dict_names_every_setting_and_nothing_else() -> None:
    typed = set(ChannelSettings.__annotations__)
    table = {s.name for s in SETTINGS}
    assert typed - table == set(), "in ChannelSettings but not in SETTINGS"
    assert table - typed == set(), "in SETTINGS but not in grpclb/config/typed.py ChannelSettings"
    assert ChannelSettings.__optional_keys__ == frozenset(typed)  # every keyword may be left out


def test_the_policy_literal_lists_the_policies() -> None:
    assert typing.get_args(Policy) == POLICIES


def test_the_public_name_is_the_typed_dict() -> None:
    assert grpclb.ChannelSettings is ChannelSettings


@pytest.mark.timeout(300)
def test_mypy_flags_misspelled_and_mistyped_settings_and_accepts_correct_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD), encoding="utf-8")
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD), encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-error-summary",
            "--show-error-codes",
            "--ignore-missing-imports",
            "--follow-imports=silent",  # check the two programs, not grpclb itself
            "--config-file=",
            f"--cache-dir={tmp_path / 'cache'}",
            "good.py",
            "bad.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # this tree's grpclb, not an installed one
        capture_output=True,
        text=True,
        timeout=280,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("good.py")], done.stdout + done.stderr
    lines = {int(m.group(1)) for e in errors if (m := re.match(r"bad\.py:(\d+):", e))}
    assert lines == {6, 7, 8, 9}, done.stdout + done.stderr
    assert '"polcy"' in done.stdout and '"dns_refresh_intervl"' in done.stdout
    assert done.returncode == 1
