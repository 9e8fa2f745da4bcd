"""The benchmark suite's own plumbing: proxy configs, /proc CPU accounting, report updates."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import proxies, report
from benchmarks.common import Section, Table, Target

ROOT = Path(__file__).resolve().parents[2]
PODS = ["127.0.0.2:5000", "127.0.0.3:5000"]


def test_nginx_config_balances_grpc_by_least_conn_over_kept_connections(tmp_path):
    text = proxies.nginx_config(tmp_path, 7000, PODS)
    assert "listen 127.0.0.1:7000 http2;" in text
    assert "grpc_pass grpc://pods;" in text
    assert "least_conn;" in text
    assert all(f"server {pod};" in text for pod in PODS)
    assert "keepalive 32;" in text  # else a new connection to a pod per call
    assert text.count(f"keepalive_requests {proxies.MANY_REQUESTS};") == 2  # client and pods
    assert "daemon off;" in text and f"pid {tmp_path / 'nginx.pid'};" in text
    assert str(tmp_path / "proxy") in text  # no temp file outside the run's directory


def test_haproxy_config_speaks_h2_on_both_sides_with_leastconn(tmp_path):
    text = proxies.haproxy_config(tmp_path, 7001, PODS)
    assert "bind 127.0.0.1:7001 proto h2" in text
    assert "balance leastconn" in text
    assert "server pod1 127.0.0.2:5000 proto h2" in text
    assert "server pod2 127.0.0.3:5000 proto h2" in text
    assert "mode http" in text


def _stat(pid: int, comm: str, pgrp: int, utime: int, stime: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    return f"{pid} ({comm}) S 1 {pgrp} {pgrp} 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0\n"


def test_group_cpu_sums_every_process_of_the_group_only(tmp_path):
    for pid, comm, pgrp, utime, stime in [
        (100, "nginx", 100, 30, 10),
        (101, "nginx", 100, 200, 50),  # a worker
        (102, "odd) name (x", 100, 5, 5),  # a command name with ") " in it
        (200, "haproxy", 200, 999, 999),  # another group
    ]:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, comm, pgrp, utime, stime))
    (tmp_path / "self").mkdir()
    (tmp_path / "300").mkdir()  # ended between the listing and the read: no stat file
    ticks = os.sysconf("SC_CLK_TCK")
    assert proxies.group_cpu_seconds(100, tmp_path) == pytest.approx(300 / ticks)
    assert proxies.group_cpu_seconds(999, tmp_path) == 0.0
    assert proxies.group_members(100, tmp_path) == [100, 101, 102]


def test_group_cpu_reads_this_process_from_the_real_proc():
    sum(i * i for i in range(200_000))  # spend a few ticks
    assert proxies.group_cpu_seconds(os.getpgrp()) > 0


def _section(name: str, title: str, targets: list[Target] | None = None) -> Section:
    section = Section(name, title, intro=f"{name} intro")
    section.tables.append(Table(("a", "b"), [(1, 2.5)]))
    section.targets.extend(targets or [])
    return section


def _page(sections: list[Section]) -> str:
    box = {"Date": "then"}
    return report.render(sections, box, command="scripts/bench.sh", wall_seconds=60, quick=False)


def test_update_adds_a_new_scenario_in_order_and_renumbers():
    old = [_section("overhead", "Overhead"), _section("spread", "Spread")]
    page = _page(old)
    new = _section("proxy", "Proxy")
    updated = report.splice(page, [new], ("overhead", "proxy", "spread"), run_note=" Apart.")
    headings = [line for line in updated.splitlines() if line.startswith("## ")]
    assert headings == ["## Machine", "## Targets", "## 1. Overhead", "## 2. Proxy", "## 3. Spread"]
    assert "<sub>Scenario `proxy` took 0 s. Apart.</sub>" in updated
    assert updated.startswith(page[: page.index("## 1.")])  # machine table and targets kept
    assert updated.endswith(page[page.index("## 2. Spread") :].replace("## 2.", "## 3."))


def test_update_replaces_a_section_and_its_targets_and_keeps_the_others():
    kept = Target("Overhead ratio", 1.0, 0.97, True)
    page = _page([_section("overhead", "Overhead", [kept]), _section("proxy", "Old proxy")])
    again = _section("proxy", "Proxy", [Target("Proxy ratio", 1.2, 1.0, True)])
    updated = report.splice(page, [again], ("overhead", "proxy"))
    assert "Old proxy" not in updated and "## 2. Proxy" in updated
    assert updated.count("Scenario `proxy`") == 1
    rows = [line for line in updated.splitlines() if line.startswith("| Overhead ratio |")]
    assert len(rows) == 1
    assert "| Proxy ratio | 1.200 | ≥ 1 | **PASS** |" in updated
    assert report.splice(updated, [again], ("overhead", "proxy")) == updated  # idempotent


def test_update_refuses_a_page_without_sections():
    with pytest.raises(ValueError, match="no numbered sections"):
        report.splice("# Benchmarks\n", [_section("proxy", "Proxy")], ("proxy",))


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        ([], True),
        (["--quick"], True),
        (["--only", "proxy"], True),
        (["--only=native,proxy"], True),
        (["--only", "overhead", "--only", "proxy"], True),
        (["--only", "overhead"], False),
        (["--only=proxyx"], False),
        (["--list"], False),
    ],
)
def test_bench_script_installs_proxies_only_for_runs_that_use_them(args, wanted):
    script = (ROOT / "scripts" / "bench.sh").read_text()
    start = script.index("wants_proxies() {")
    function = script[start : script.index("\n}\n", start) + 3]
    done = subprocess.run(
        ["bash", "-c", f'{function}wants_proxies "$@"', "bash", *args], check=False, timeout=10
    )
    assert (done.returncode == 0) is wanted


def test_hot_path_descriptions_tell_functions_of_one_name_apart() -> None:
    from benchmarks.hotpath_report import _why

    handle = _why("`__init__` (core/attempt.py:28)")
    logical_call = _why("`__init__` (aio/calls.py:128)")
    assert handle and logical_call and handle != logical_call
    assert _why("`start_call` (core/balancer.py:237)")  # a name of its own needs no path
    assert _why("`no_such_function` (core/balancer.py:1)") == ""
