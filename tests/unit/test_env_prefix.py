"""Per-upstream environment configuration: ``env_prefix`` and its precedence.

Two upstreams in one process can be tuned apart through the environment: a channel
with ``env_prefix="PAYMENTS_"`` reads ``PAYMENTS_GRPCLB_<NAME>`` first, then the
process-wide ``GRPCLB_<NAME>``; a keyword beats both. Misspelled prefixed variables are
named in a warning, as plain ones are.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import grpclb
import grpclb.aio
from grpclb.config.settings import Settings
from grpclb.errors import ConfigError

STATIC = "ipv4:127.0.0.1:1"  # no DNS; nothing is called


def load(overrides: dict[str, object] | None = None, **environ: str) -> Settings:
    return Settings.load(overrides or {}, environ=environ, env_prefix="PAYMENTS_")


@pytest.mark.parametrize(
    ("overrides", "environ", "want"),
    [
        pytest.param({}, {}, "least_request", id="default"),
        pytest.param({}, {"GRPCLB_POLICY": "random"}, "random", id="plain"),
        pytest.param({}, {"PAYMENTS_GRPCLB_POLICY": "pick_first"}, "pick_first", id="prefixed"),
        pytest.param(
            {},
            {"GRPCLB_POLICY": "random", "PAYMENTS_GRPCLB_POLICY": "pick_first"},
            "pick_first",
            id="prefixed-beats-plain",
        ),
        pytest.param(
            {"policy": "round_robin"},
            {"GRPCLB_POLICY": "random", "PAYMENTS_GRPCLB_POLICY": "pick_first"},
            "round_robin",
            id="keyword-beats-both",
        ),
        pytest.param({}, {"SEARCH_GRPCLB_POLICY": "random"}, "least_request", id="other-prefix"),
    ],
)
def test_precedence_is_keyword_then_prefixed_then_plain_then_default(
    overrides: dict[str, object], environ: dict[str, str], want: str
) -> None:
    assert load(overrides, **environ).policy == want


def test_settings_not_overridden_under_the_prefix_come_from_the_plain_variables() -> None:
    settings = load(GRPCLB_RETRIES="4", PAYMENTS_GRPCLB_POLICY="round_robin")
    assert (settings.policy, settings.retries) == ("round_robin", 4)


def test_without_a_prefix_prefixed_variables_are_not_read() -> None:
    environ = {"PAYMENTS_GRPCLB_POLICY": "random"}
    assert Settings.load({}, environ=environ).policy == "least_request"


def test_a_bad_prefixed_value_names_the_prefixed_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable PAYMENTS_GRPCLB_RETRIES='x'"):
        load(GRPCLB_RETRIES="1", PAYMENTS_GRPCLB_RETRIES="x")


def test_a_misspelled_prefixed_variable_is_named_in_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="grpclb"):
        settings = load(PAYMENTS_GRPCLB_POLCY="random", SEARCH_GRPCLB_POLCY="random")
    assert settings.policy == "least_request"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages  # another upstream's variables are its own business
    assert "PAYMENTS_GRPCLB_POLCY" in messages[0]
    assert "PAYMENTS_GRPCLB_POLICY" in messages[0]


def test_misspelled_plain_variables_still_warn_for_a_prefixed_channel(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="grpclb"):
        load(GRPCLB_POLCY="random")
    assert ["GRPCLB_POLCY" in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.parametrize(
    "prefix", ["payments_", "PAYMENTS", "_PAYMENTS_", "1PAY_", "PAY-MENTS_", "", 5, "GRPCLB_X_"]
)
def test_a_bad_prefix_is_a_config_error_naming_env_prefix(prefix: object) -> None:
    with pytest.raises(ConfigError, match=r"env_prefix=.* is invalid: .*PAYMENTS_"):
        Settings.load({}, environ={}, env_prefix=prefix)  # type: ignore[arg-type]


def test_the_sync_channel_reads_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPCLB_POLICY", "random")
    monkeypatch.setenv("PAYMENTS_GRPCLB_POLICY", "round_robin")
    with (
        grpclb.channel(STATIC, env_prefix="PAYMENTS_") as payments,
        grpclb.channel(STATIC) as other,
    ):
        assert payments.settings.policy == "round_robin"
        assert other.settings.policy == "random"


def test_the_aio_channel_reads_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENTS_GRPCLB_RETRIES", "5")

    async def main() -> int:
        channel = grpclb.aio.channel(STATIC, env_prefix="PAYMENTS_")
        try:
            return channel.settings.retries
        finally:
            await channel.close()

    assert asyncio.run(main()) == 5


def test_the_command_line_opens_a_channel_as_one_with_that_prefix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from grpclb.tools import cli

    monkeypatch.setenv("PAYMENTS_GRPCLB_POLICY", "round_robin")
    with cli.open_channel(STATIC, {}, "PAYMENTS_") as channel:
        assert channel.settings.policy == "round_robin"
    assert cli.main(["inspect", "--env-prefix", "payments", STATIC]) == 1
    assert "env_prefix='payments' is invalid" in capsys.readouterr().err
