"""The docs and examples match the code: a reference that cannot drift, examples that compile."""

from __future__ import annotations

import dataclasses
import py_compile
import re
from pathlib import Path

import pytest

from grpclb import telemetry
from grpclb.config.settings import SETTINGS, Settings
from grpclb.tools import docgen

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
# Written by a benchmark run, not by hand: links to them may exist before they do.
GENERATED = {DOCS / "benchmarks.md"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_configuration_reference_is_current():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert docgen.is_current(text), (
        "docs/configuration.md is stale: run python -m grpclb.tools.docgen"
    )
    assert docgen.main(["--check", "--file", str(DOCS / "configuration.md")]) == 0


def test_docgen_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text(f"intro\n{docgen.BEGIN}\n| old |\n{docgen.END}\nafter\n", encoding="utf-8")
    assert docgen.main(["--check", "--file", str(stale)]) == 1
    assert docgen.main(["--file", str(stale)]) == 0
    assert docgen.main(["--check", "--file", str(stale)]) == 0
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("\nafter\n")
    missing = tmp_path / "none.md"
    missing.write_text("no markers\n", encoding="utf-8")
    assert docgen.main(["--check", "--file", str(missing)]) == 2
    capsys.readouterr()


def test_every_setting_is_in_the_reference_with_its_default():
    table = docgen.render_table()
    for setting in SETTINGS:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{setting.name}` "))
        assert f"`{setting.env}`" in row
        assert f"`{docgen.format_default(setting)}`" in row


def test_the_defaults_documented_are_the_defaults_a_channel_gets():
    loaded = Settings.load({}, environ={})
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert fields.keys() == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        assert getattr(loaded, setting.name) == setting.default == fields[setting.name]


def test_defaults_read_as_people_write_them():
    by_name = {s.name: s for s in SETTINGS}
    assert docgen.format_default(by_name["dns_refresh_interval"]) == "5s"
    assert docgen.format_default(by_name["retry_backoff_base"]) == "25ms"
    assert docgen.format_default(by_name["max_connection_age"]) == "off"
    assert docgen.format_default(by_name["retry_codes"]) == "UNAVAILABLE"
    assert docgen.format_default(by_name["dns_respect_ttl"]) == "true"
    assert docgen.describe_type(by_name["retries"]) == "integer 0 to 10"
    assert docgen.describe_type(by_name["max_requests"]).startswith("integer ≥ 1")
    assert docgen.describe_type(by_name["max_ejection_percent"]) == "number 0 to 100"
    assert docgen.describe_type(by_name["policy"]).startswith("one of `round_robin`")


def telemetry_names() -> set[str]:
    """Every metric and attribute name constant, and every trace event name."""
    names = {
        value
        for name, value in vars(telemetry).items()
        if name.isupper() and isinstance(value, str) and "." in value
    }
    source = Path(telemetry.__file__).read_text(encoding="utf-8")
    names |= set(re.findall(r'add_event\(\s*"([^"]+)"', source))
    names |= set(re.findall(r'"(grpclb\.[a-z_.]+)":', source))  # event attributes
    return names


def test_every_metric_attribute_and_event_is_in_the_metrics_reference():
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    names = telemetry_names()
    assert telemetry.ATTEMPT_STARTED in names and "grpclb.retry_refused" in names
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_every_doc_is_reachable_from_the_readme_and_every_link_resolves():
    seen: set[Path] = set()
    todo = [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for link in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in link or link.startswith("mailto:"):
                continue
            target = (page.parent / link).resolve()
            assert target.exists() or target in GENERATED, f"{page.name}: broken link {link}"
            if target.suffix == ".md" and target.exists():
                todo.append(target)
    unreachable = sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in seen)
    assert not unreachable, f"not linked from README.md (directly or not): {unreachable}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "example.pyc"), doraise=True)


def kubernetes_files() -> list[Path]:
    return sorted((EXAMPLES / "kubernetes").glob("*.yaml"))


def test_kubernetes_examples_use_only_real_settings():
    names = {s.env for s in SETTINGS}
    files = kubernetes_files()
    assert files
    used = {n for f in files for n in re.findall(r"\bGRPCLB_[A-Z0-9_]+", f.read_text())}
    assert used, "the client is configured through GRPCLB_* variables"
    assert used <= names, f"not settings: {sorted(used - names)}"


def test_kubernetes_examples_parse_and_their_values_are_valid():
    yaml = pytest.importorskip("yaml")
    documents = [d for f in kubernetes_files() for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {d["kind"] for d in documents}
    assert {"Service", "Deployment"} <= kinds
    service = next(d for d in documents if d["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "None"  # headless
    environ = {}
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                if variable["name"].startswith("GRPCLB_"):
                    assert isinstance(variable["value"], str), variable  # Kubernetes wants strings
                    environ[variable["name"]] = variable["value"]
    assert environ
    Settings.load({}, environ=environ)  # raises ConfigError on a bad value
