"""grpclb follows the library logging convention: a NullHandler, and nothing printed
until the application configures logging (the command line, an application, does).

Each case runs a fresh interpreter, because logging's configuration is process-wide and
pytest installs handlers of its own on the root logger.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import grpclb

ROOT = Path(__file__).resolve().parents[2]
WARN = "import logging; logging.getLogger('grpclb').warning('grpclb: visible warning')"


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_grpclb_logger_has_a_null_handler_and_nothing_else() -> None:
    handlers = logging.getLogger(grpclb.__name__).handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert all(isinstance(h, logging.NullHandler) for h in handlers)


def test_an_unconfigured_program_prints_none_of_grpclbs_warnings() -> None:
    done = run(f"import grpclb; {WARN}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_basic_config_shows_grpclbs_warnings() -> None:
    done = run(f"import grpclb, logging; logging.basicConfig(format='%(message)s'); {WARN}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "grpclb: visible warning\n"


def test_a_handler_on_the_grpclb_logger_alone_shows_them() -> None:
    done = run(
        "import grpclb, logging, sys; "
        "logging.getLogger('grpclb').addHandler(logging.StreamHandler(sys.stdout)); " + WARN
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("grpclb: visible warning\n", "")


def test_the_command_line_prints_grpclbs_warnings_to_stderr() -> None:
    done = run(f"from grpclb.tools.cli import main; assert main(['settings']) == 0; {WARN}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "grpclb: visible warning\n"
