"""Packaging as a user meets it, built with the oldest backend pyproject.toml allows.

1. Copy the tracked (and new, not ignored) files to a scratch directory, so nothing the
   developer's tree holds (an egg-info, build/, .venv) leaks into the artefacts.
2. In a throwaway venv, install setuptools at exactly the floor of
   ``[build-system] requires`` plus ``build``, and build the sdist, then the wheel from
   the sdist (``python -m build --no-isolation``), so the sdist is proven complete too.
3. Inspect both: License-Expression, the license file, >= 3 classifiers (Typing :: Typed
   among them), Requires-Python, py.typed, and no tests in the wheel.
4. Install the wheel alone into a fresh venv (its dependencies from the package index),
   then, outside the source tree, import grpclb, make a channel (a static ipv4: target:
   no DNS, no call) and run ``python -m grpclb --help``.

Run by scripts/check-packaging.sh (which scripts/lint.sh, hence .ci/run, calls).
Exits 1 with one line per problem.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LICENSE_EXPRESSION = "Apache-2.0"
SMOKE = """
import sys
import grpclb, grpclb.aio
assert "site-packages" in grpclb.__file__, grpclb.__file__
channel = grpclb.channel("ipv4:127.0.0.1:50051,127.0.0.2:50051", policy="round_robin")
print(repr(channel))
channel.close()
"""


class Failed(Exception):
    """A packaging check failed; the message says which."""


def backend_floor() -> str:
    """``setuptools==X`` for ``requires = ["setuptools>=X"]`` in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[build-system]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'"setuptools\s*>=\s*([0-9][0-9.]*)"', section)
    if not found:
        raise Failed("[build-system] requires has no 'setuptools>=X' floor to build with")
    return f"setuptools=={found.group(1)}"


def run(*args: str | Path, cwd: Path | None = None) -> str:
    """Run a command in a clean environment (no PYTHONPATH, no active venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise Failed(
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def pip_for(path: Path) -> list[str | Path]:
    """A fresh venv at ``path`` and the pip command that installs into it.

    Bootstrapping pip into each venv (ensurepip) costs seconds, tens of them on a loaded
    machine; this interpreter's own pip installs into another environment with
    ``--python`` (pip >= 22.3), so venvs are made without pip when it can.
    """
    python = path / "bin" / "python"
    try:
        import pip

        usable = tuple(int(p) for p in pip.__version__.split(".")[:2]) >= (22, 3)
    except ImportError:
        usable = False
    venv.EnvBuilder(with_pip=not usable, clear=True).create(path)
    if usable:
        return [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile"]
    return [python, "-m", "pip", "install", "-q", "--no-compile"]


def copy_sources(dest: Path) -> None:
    if (ROOT / ".git").exists():
        listed = run(
            "git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"
        )
        names = [n for n in listed.split("\0") if n]
    else:  # an unpacked sdist: take what is there
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    for name in names:
        source = ROOT / name
        if source.is_file():  # skips files deleted but not yet committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def check_metadata(metadata_text: str, where: str) -> list[str]:
    meta = email.parser.Parser().parsestr(metadata_text)
    problems = []
    if meta.get("License-Expression") != LICENSE_EXPRESSION:
        problems.append(f"{where}: License-Expression is {meta.get('License-Expression')!r}")
    if "LICENSE" not in (meta.get_all("License-File") or []):
        problems.append(f"{where}: no License-File: LICENSE")
    classifiers = meta.get_all("Classifier") or []
    if len(classifiers) < 3 or "Typing :: Typed" not in classifiers:
        problems.append(f"{where}: classifiers {classifiers} (want >= 3, with Typing :: Typed)")
    if not meta.get("Requires-Python"):
        problems.append(f"{where}: no Requires-Python")
    return problems


def check_wheel(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        problems = check_metadata(archive.read(metadata).decode(), wheel.name)
        licenses = [n for n in names if re.search(r"\.dist-info/licenses/LICENSE$", n)]
        if not licenses or b"Apache License" not in archive.read(licenses[0]):
            problems.append(f"{wheel.name}: no Apache license text in .dist-info/licenses/")
    if "grpclb/py.typed" not in names:
        problems.append(f"{wheel.name}: no grpclb/py.typed")
    tests = [
        n
        for n in names
        if n.startswith("tests/") or re.search(r"(^|/)(test_[^/]*|conftest)\.py$", n)
    ]
    if tests:
        problems.append(f"{wheel.name}: carries tests: {tests[:5]}")
    return problems


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        top = names[0].split("/")[0]
        pkg_info = archive.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        problems = check_metadata(pkg_info.read().decode(), sdist.name)
    if f"{top}/LICENSE" not in names:
        problems.append(f"{sdist.name}: no LICENSE")
    return problems


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grpclb-packaging-") as scratch:
        work = Path(scratch)
        floor = backend_floor()
        copy_sources(work / "src")

        install = pip_for(work / "build-venv")
        builder = work / "build-venv" / "bin" / "python"
        run(*install, floor, "build")
        have = run(builder, "-c", "import setuptools; print(setuptools.__version__)").strip()
        if f"setuptools=={have}" != floor:
            raise Failed(f"wanted {floor} to build with, got setuptools {have}")
        run(builder, "-m", "build", "--no-isolation", "--outdir", work / "dist", work / "src")
        wheel = next((work / "dist").glob("*.whl"))
        sdist = next((work / "dist").glob("*.tar.gz"))
        print(
            f"check-packaging: built {sdist.name} and {wheel.name} with {floor} "
            f"({time.monotonic() - started:.0f}s)"
        )

        problems = check_wheel(wheel) + check_sdist(sdist)
        if problems:
            raise Failed("\n".join(problems))

        install = pip_for(work / "user-venv")
        user = work / "user-venv" / "bin" / "python"
        run(*install, wheel)
        print(f"check-packaging: installed the wheel alone ({time.monotonic() - started:.0f}s)")
        print("check-packaging: " + run(user, "-c", SMOKE, cwd=work).strip())
        usage = run(user, "-m", "grpclb", "--help", cwd=work)
        if "usage:" not in usage:
            raise Failed(f"python -m grpclb --help printed no usage:\n{usage}")
    print(f"check-packaging: ok in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as failure:
        print(f"check-packaging: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
