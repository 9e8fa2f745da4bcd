"""Packaging metadata agrees with its build backend, and the wheel inspector catches what
it must (scripts/check_packaging.py runs the real build; here its checks run on
hand-made wheels, so a broken check cannot pass silently)."""

from __future__ import annotations

import importlib.util
import re
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
GOOD_METADATA = """Metadata-Version: 2.4
Name: grpclb-client
Version: 0.1.0
License-Expression: Apache-2.0
License-File: LICENSE
Classifier: Programming Language :: Python :: 3
Classifier: Typing :: Typed
Classifier: Topic :: System :: Networking
Requires-Python: >=3.10
"""
DIST = "grpclb_client-0.1.0.dist-info"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_packaging", ROOT / "scripts/check_packaging.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = load_checker()


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_an_spdx_license_needs_setuptools_77_and_the_floor_says_so() -> None:
    # PEP 639 expressions and license-files are read by setuptools >= 77 only.
    assert isinstance(PYPROJECT["project"]["license"], str)
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    floor = checker.backend_floor()
    assert re.fullmatch(r"setuptools==[0-9.]+", floor)
    assert version(floor.split("==")[1]) >= (77,)
    assert [r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r] == [
        floor.replace("==", ">=")
    ]


def test_the_license_file_is_the_apache_license() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_project_declares_python_versions_and_typing() -> None:
    classifiers = PYPROJECT["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639 forbids both
    floor = PYPROJECT["project"]["requires-python"]
    assert floor == ">=3.10" and "Programming Language :: Python :: 3.10" in classifiers
    assert (ROOT / "grpclb" / "py.typed").exists()


def make_wheel(
    path: Path, metadata: str = GOOD_METADATA, extra: tuple[str, ...] = (), typed: bool = True
) -> Path:
    wheel = path / "grpclb_client-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("grpclb/__init__.py", "")
        if typed:
            archive.writestr("grpclb/py.typed", "")
        archive.writestr(f"{DIST}/METADATA", metadata)
        archive.writestr(f"{DIST}/licenses/LICENSE", "Apache License\nVersion 2.0\n")
        for name in extra:
            archive.writestr(name, "")
    return wheel


def test_a_good_wheel_passes(tmp_path: Path) -> None:
    assert checker.check_wheel(make_wheel(tmp_path)) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"metadata": GOOD_METADATA.replace("License-Expression: Apache-2.0\n", "")},
            "License-Expression",
        ),
        ({"metadata": GOOD_METADATA.replace("License-File: LICENSE\n", "")}, "License-File"),
        ({"metadata": GOOD_METADATA.replace("Classifier: Typing :: Typed\n", "")}, "classifiers"),
        ({"metadata": GOOD_METADATA.replace("Requires-Python: >=3.10\n", "")}, "Requires-Python"),
        ({"typed": False}, "py.typed"),
        ({"extra": ("tests/unit/test_x.py",)}, "carries tests"),
        ({"extra": ("grpclb/test_thing.py",)}, "carries tests"),
    ],
    ids=[
        "license-expression",
        "license-file",
        "classifiers",
        "requires-python",
        "py.typed",
        "tests-dir",
        "test-module",
    ],
)
def test_each_missing_piece_is_reported(tmp_path: Path, change: dict, problem: str) -> None:
    problems = checker.check_wheel(make_wheel(tmp_path, **change))
    assert len(problems) == 1 and problem in problems[0], problems
