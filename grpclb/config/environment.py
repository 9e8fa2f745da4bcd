"""Where settings come from in the environment: ``GRPCLB_*``, and per upstream ``<PREFIX>GRPCLB_*``.

A process often talks to several upstreams that need different treatment (a payments
service with ring_hash, a search service with more retries). ``GRPCLB_*`` variables
apply to every channel in the process; a channel created with ``env_prefix="PAYMENTS_"``
first reads ``PAYMENTS_GRPCLB_*``, so one upstream can be tuned without touching the
others, and process-wide defaults still apply to what it does not override. The full
name keeps ``GRPCLB_`` in it, so every variable that configures grpclb is found by
searching for ``GRPCLB_``.

Precedence, per setting: keyword argument, then ``<PREFIX>GRPCLB_<NAME>``, then
``GRPCLB_<NAME>``, then the default.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from grpclb.errors import ConfigError

ENV_PREFIX = "GRPCLB_"
_CHANNEL_PREFIX = re.compile(r"[A-Z][A-Z0-9_]*_")
log = logging.getLogger("grpclb")


def check_env_prefix(env_prefix: object) -> str | None:
    """The channel's prefix, validated: upper-case letters, digits and ``_``, ending in ``_``."""
    if env_prefix is None:
        return None
    if not isinstance(env_prefix, str) or not _CHANNEL_PREFIX.fullmatch(env_prefix):
        raise ConfigError(
            f"env_prefix={env_prefix!r} is invalid: expected upper-case letters, digits and "
            "underscores, starting with a letter and ending in '_', e.g. 'PAYMENTS_' "
            "(which reads PAYMENTS_GRPCLB_POLICY), or None"
        )
    if env_prefix.startswith(ENV_PREFIX):
        raise ConfigError(
            f"env_prefix={env_prefix!r} is invalid: it must not start with {ENV_PREFIX!r}; "
            f"grpclb adds {ENV_PREFIX!r} itself (env_prefix='PAYMENTS_' reads "
            "PAYMENTS_GRPCLB_POLICY)"
        )
    return env_prefix


def variable_prefixes(env_prefix: str | None) -> tuple[str, ...]:
    """The variable prefixes a channel reads, the one that wins first."""
    return (env_prefix + ENV_PREFIX, ENV_PREFIX) if env_prefix else (ENV_PREFIX,)


def read(
    environ: Mapping[str, str], names: Iterable[str], env_prefix: str | None
) -> dict[str, tuple[str, str]]:
    """Each setting's value found in ``environ``: name -> (raw string, variable name).

    Variables under one of the channel's prefixes that name no setting are logged as a
    warning (with the known names), the same for prefixed and plain ones, and ignored.
    """
    known = list(names)
    prefixes = variable_prefixes(env_prefix)
    for prefix in prefixes:
        _warn_unknown(environ, prefix, known)
    found: dict[str, tuple[str, str]] = {}
    for name in known:
        for prefix in prefixes:
            variable = prefix + name.upper()
            if variable in environ:
                found[name] = (environ[variable], variable)
                break
    return found


def _warn_unknown(environ: Mapping[str, str], prefix: str, known: list[str]) -> None:
    upper = {name.upper() for name in known}
    for variable in sorted(environ):
        if variable.startswith(prefix) and variable[len(prefix) :] not in upper:
            log.warning(
                "grpclb: ignoring %s: no such setting (known: %s)",
                variable,
                ", ".join(prefix + name.upper() for name in known),
            )
