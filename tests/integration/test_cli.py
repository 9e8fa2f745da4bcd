"""The command line against real pods and a real DNS server (issue: observability).

An operator reads these tables instead of a proxy's admin page, and scripts
read the exit codes, so both are pinned here: one row per pod with its state
and counts, one line and exit 1 for each error an operator can act on, exit 2
for a mistyped command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpclb.__main__ import main
from grpclb.config.settings import SETTINGS
from grpclb.testing import SERVICE_NAME
from grpclb.tools import cli

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(\d+\.\d+\.\d+\.\d+:\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)(.*)$")
UNKNOWN = "nope.default.svc.cluster.local"


@pytest.fixture
def fleet(pods, dns_server):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    return fleet


@pytest.fixture
def target(fleet, dns_server) -> str:
    return dns_server.target(SERVICE_NAME, fleet.port)


def rows(text: str) -> list[tuple[str, ...]]:
    """The pod rows of every table in ``text``: address, state, counters, age, rest."""
    return [m.groups() for line in text.splitlines() if (m := ROW.match(line))]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_one_row_per_pod_with_state_and_counts(capsys, fleet, target):
    code, out, err = run_cli(capsys, "inspect", target, "--set", "policy=round_robin")
    assert (code, err) == (0, "")
    found = rows(out)
    assert sorted(r[0] for r in found) == sorted(fleet.addresses)
    assert {r[1:6] for r in found} == {("ready", "0", "0", "0", "0")}
    assert "ADDRESS" in out and "policy  round_robin   pods 3 (3 ready)" in out


def test_inspect_health_asks_each_pod(capsys, fleet, target):
    code, out, _ = run_cli(capsys, "inspect", target, "--health")
    assert code == 0
    assert [r[7].strip() for r in rows(out)] == ["SERVING"] * 3
    unknown = run_cli(capsys, "inspect", target, "--health", "--health-service", "no.Such")
    assert [r[7].strip() for r in rows(unknown[1])] == ["NOT_FOUND"] * 3


def test_unknown_name_is_one_line_and_exit_1(capsys, fleet, dns_server):
    code, out, err = run_cli(capsys, "inspect", dns_server.target(UNKNOWN, fleet.port))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "no endpoints" in err and UNKNOWN in err, err


def test_unknown_name_exit_code_from_a_real_process(fleet, dns_server):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "grpclb", "inspect", dns_server.target(UNKNOWN, fleet.port)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    assert done.returncode == 1, done
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("grpclb inspect: error: no endpoints for dns://")


def test_stopped_dns_server_is_exit_1_naming_the_timeout(capsys, target, dns_server):
    dns_server.stop()
    code, _, err = run_cli(capsys, "inspect", target, "--set", "dns_timeout=300ms")
    assert code == 1 and err.count("\n") == 1
    assert "timed out" in err, err
    code, _, err = run_cli(capsys, "inspect", target, "--timeout", "100ms")
    assert code == 1 and "timed out after 0.1s waiting for a DNS answer" in err, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "policy=lest_request"], "--set policy='lest_request' is invalid"),
        (["--set", "dns_refresh_interval=soon"], "--set dns_refresh_interval='soon'"),
        (["--set", "polcy=random"], "unknown setting 'polcy'"),
        (["--set", "policy=ring_hash"], "needs hash_key"),
    ],
)
def test_bad_setting_is_exit_1_naming_it(capsys, target, argv, expected):
    code, out, err = run_cli(capsys, "inspect", target, *argv)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert expected in err, err


def test_bad_target_and_bad_environment_are_exit_1(capsys, monkeypatch):
    code, _, err = run_cli(capsys, "inspect", "dns:///echo.default.svc.cluster.local")
    assert code == 1 and "has no port" in err and err.count("\n") == 1
    monkeypatch.setenv("GRPCLB_POLICY", "lest_request")
    code, _, err = run_cli(capsys, "inspect", "ipv4:127.0.0.1:1")
    assert code == 1 and "GRPCLB_POLICY" in err and "round_robin" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["inspect"],
        ["inspect", "ipv4:127.0.0.1:1", "--set", "policy"],
        ["inspect", "ipv4:127.0.0.1:1", "--timeout", "soon"],
        ["watch", "ipv4:127.0.0.1:1", "--count", "0"],
        ["watch", "ipv4:127.0.0.1:1", "--probe", "Check"],
        ["demo", "--pods", "0"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "") and "usage: grpclb" in err


def test_watch_count_2_prints_two_tables_and_probes_move_the_counts(capsys, fleet, target):
    argv = ["watch", target, "--count", "2", "--interval", "100ms", "--probe", "health"]
    code, out, err = run_cli(capsys, *argv, "--set", "policy=round_robin")
    assert (code, err) == (0, "")
    assert out.count("ADDRESS") == 2 and "refresh 2/2" in out
    found = rows(out)
    assert [r[0] for r in found[:3]] == [r[0] for r in found[3:]] == sorted(fleet.addresses)
    assert [int(r[3]) for r in found] == [1, 1, 1, 2, 2, 2]  # one probe per pod per refresh
    assert "6 sent, 6 ok, 0 failed" in out


def test_settings_lists_every_setting(capsys):
    code, out, _ = run_cli(capsys, "settings")
    assert code == 0
    listed = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert list(listed) == [s.name for s in SETTINGS]
    assert all(listed[s.name][0] == s.env for s in SETTINGS)
    assert listed["dns_refresh_interval"][1] == "5s" and listed["retry_backoff_base"][1] == "25ms"
    assert listed["max_connection_age"][1] == "off" and listed["policy"][1] == "least_request"


def test_demo_shows_one_pod_for_grpcio_and_an_even_spread_for_round_robin(capsys):
    code, out, err = run_cli(capsys, "demo", "--pods", "3", "--calls", "90")
    assert code == 0, err
    sections = {s.split("]")[0]: s for s in out.split("\n[")[1:]}
    assert "pods used: 1 of 3, max 90, min 0" in sections["plain grpcio"]
    assert "pods used: 3 of 3, max 30, min 30" in sections["grpclb round_robin"]
    assert [r[1] for r in map(str.split, sections["grpclb round_robin"].splitlines()[2:5])] == [
        "30",
        "30",
        "30",
    ]
    for policy in ("least_request", "random", "pick_first", "ring_hash", "maglev"):
        assert f"grpclb {policy}" in sections
    assert "pods used: 1 of 3" in sections["grpclb pick_first"]
    assert "90 of 90 users always on one pod" in sections["grpclb ring_hash"]
    assert "first call on the new pod" in sections["scale up"]
    assert "failed calls: 0 of" in sections["during scale down"]


@pytest.mark.parametrize("service", ["", "grpclb.testing.Echo"])
def test_the_hand_written_health_codec_matches_protobuf(service):
    """The CLI speaks grpc.health.v1 without protobuf; the real messages are the oracle."""
    from grpc_health.v1 import health_pb2

    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert cli.encode_health_request(service) == expected
    for name, status in health_pb2.HealthCheckResponse.ServingStatus.items():
        reply = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert cli.decode_health_status(reply) == name


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0291, "29ms"),
        (12.34, "12.3s"),
        (245, "4m05s"),
        (7380, "2h03m"),
        (93600, "1d02h"),
    ],
)
def test_durations_read_like_kubectl_ages(seconds, text):
    assert cli.format_duration(seconds) == text


def test_demo_without_dnsmasq_prints_the_setup_hint_and_exits_2(capsys, monkeypatch):
    from grpclb.testing import dns

    monkeypatch.setattr(dns.shutil, "which", lambda *args, **kwargs: None)
    code, out, err = run_cli(capsys, "demo", "--pods", "1")
    assert (code, out) == (2, "")
    assert dns.SETUP_HINT in err and err.count("\n") == 1
