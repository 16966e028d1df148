"""What a reload (SIGHUP) would change: the new configuration, read and checked as at start.

A configuration that cannot run is refused before anything changes, with the one-line reason
the operator sees (the running configuration stays); one that can is resolved like the first
(``workers.count = "auto"``) and compared with the running one (``pool.plan_reload``). The
supervisor applies the result: log level, generation, thread counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from whisperd import config as config_mod
from whisperd import layout, models, pool
from whisperd.config import Config, ConfigError
from whisperd.layout import Layout


class ReloadRefused(Exception):
    """The new configuration cannot be run; str() is why, in one line."""


@dataclass(frozen=True)
class Reload:
    cfg: Config  # the new configuration, workers.count resolved
    layout: Layout
    plan: pool.ReloadPlan


def read_config(path: str | None) -> Config:
    """The configuration file at ``path``, checked as at start (its model included)."""
    try:
        new = config_mod.load(path)
    except ConfigError as e:
        raise ReloadRefused(str(e)) from None
    if missing := models.missing_reason(new.model):
        raise ReloadRefused(missing)
    return new


def plan(running: Config, new: Config, gpus: int, cores: int) -> Reload:
    """``new`` resolved for this host and what it changes against ``running``."""
    resolved, chosen = layout.resolve(new, gpus)
    return Reload(resolved, chosen, pool.plan_reload(running, resolved, cores))
