"""Sweep files: a TOML file naming a sweep, its model, its seeds, fixed settings and a grid.

    name = "bond_sweep"
    model = "mpo2"                 # or an axis of the grid: model = ["mpo2", "mmpo2"]
    seeds = [0, 1, 2, 3, 4]
    [settings]                     # every configuration's; names as run_*.sh's settings, in lower case
    dataset = "california_housing"
    n_samples = 500
    [grid]                         # one configuration per combination of these values
    bond_dim = [4, 6, 8, 10]
    l = [3, 4]

Each configuration is one experiment, named after the sweep and its grid values
(`bond_sweep_bond_dim4_l3`); a setting named nowhere takes run_*.sh's default (not its environment
variable: the file alone says what the sweep trains). Every value is checked as run_*.sh checks it.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntn.errors import NtnError
from ntn.tracking import Redactor

from experiments.dataset_loader import quality_of
from experiments.settings import MODELS, SETTINGS, SettingError, Settings, seeds, settings_of

# settings a sweep file may fix or sweep; the others belong to the sweep itself (seeds, its output) or
# come from the environment as for run_*.sh (the tracker variables)
SWEEPABLE = tuple(
    s.dest
    for s in SETTINGS
    if s.has_flag and s.dest not in ("seeds", "output_file", "experiment_name", "verbose", "tracker_backend")
)
KEYS = ("name", "model", "seeds", "settings", "grid")
MAX_CONFIGURATIONS = 10_000  # a larger grid is refused before it is expanded
_NAME = re.compile(r"[A-Za-z0-9._-]+")


class SweepError(NtnError, ValueError):
    """The sweep file cannot be trained as written; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Configuration:
    """One point of the grid: an experiment of its own, trained for every seed of the sweep."""

    model: str
    values: dict[str, Any]  # the grid's values at this point, `model` included when it is an axis
    settings: Settings  # experiment_name: the sweep's name and these values
    sweep: str = ""  # the sweep's name

    @property
    def tracked(self) -> dict[str, Any]:
        """What its runs' trackers get beside the settings: the sweep's name and the values swept here (a
        script's experiment, of no sweep: nothing)."""
        return {"sweep": self.sweep, "swept": dict(self.values)} if self.sweep else {}

    @property
    def quality(self) -> str:
        """The figure its runs are ranked by: r2 (regression) or accuracy (classification)."""
        return quality_of(self.settings.dataset)


@dataclass(frozen=True)
class Sweep:
    name: str
    seeds: list[int]
    grid: dict[str, list[Any]]
    configurations: list[Configuration]


def _text(value: Any) -> str:
    """A TOML value as run_*.sh would receive it in its environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise SettingError(f"must be a number, a string or a boolean, not a {type(value).__name__}")


def _label(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", _text(value))


def load(path: str | Path, tracker_backend: str | None = None) -> Sweep:
    """The sweep a file describes, every configuration's settings resolved and checked.

    :param tracker_backend: TRACKER_BACKEND of every run (default: $TRACKER_BACKEND, else file)
    :raises SweepError: one line naming the file and what is wrong in it
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SweepError(f"{path}: cannot read the sweep file ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SweepError(f"{path}: not a TOML file: {err}") from None
    try:
        return _sweep(document, tracker_backend or os.environ.get("TRACKER_BACKEND") or "file")
    except SettingError as err:
        raise SweepError(f"{path}: {err}") from None


def _sweep(document: dict[str, Any], tracker_backend: str) -> Sweep:
    unknown = [key for key in document if key not in KEYS]
    if unknown:
        raise SettingError(f"unknown key {unknown[0]!r}; a sweep file has: {', '.join(KEYS)}")
    name = document.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SettingError(f"name={name!r} must be a non-empty string of letters, digits, '.', '_' or '-'")
    if Redactor().text(name) != name:  # it names files, runs and messages: refused, never shown
        raise SettingError("name holds the value of a secret variable (a token, a password); name the sweep otherwise")
    fixed, grid = document.get("settings", {}), document.get("grid", {})
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise SettingError("[settings] and [grid] must be tables")
    if not grid:
        raise SettingError("[grid] is empty: name at least one setting and its values, e.g. bond_dim = [4, 8]")
    for key, values in grid.items():
        if key not in (*SWEEPABLE, "model"):
            raise SettingError(f"grid.{key} is not a setting; allowed: model, {', '.join(SWEEPABLE)}")
        if not isinstance(values, list) or not values:
            raise SettingError(f"grid.{key} must be a non-empty list of values, e.g. {key} = [4, 8]")
        if len(set(map(_text, values))) < len(values):
            raise SettingError(f"grid.{key}={values!r} repeats a value")
    size = math.prod(len(values) for values in grid.values())
    if size > MAX_CONFIGURATIONS:
        raise SettingError(
            f"[grid] makes {size} configurations, more than {MAX_CONFIGURATIONS}; split it into several sweeps"
        )
    for key in fixed:
        if key not in SWEEPABLE:
            raise SettingError(f"settings.{key} is not a setting; allowed: {', '.join(SWEEPABLE)}")
        if key in grid:
            raise SettingError(f"{key} is both in [settings] and in [grid]; keep it in one")
    model = document.get("model")
    if ("model" in grid) == (model is not None):
        raise SettingError('name the model once: model = "mpo2", or model = [...] in [grid]')
    for value in grid.get("model", [model]):
        if value not in MODELS:
            raise SettingError(f"model={value!r} must be one of: {', '.join(MODELS)}")
    seed_list = document.get("seeds", [0, 1, 2, 3, 4])
    if not isinstance(seed_list, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list):
        raise SettingError(f"seeds={seed_list!r} must be a list of integers >= 0, e.g. [0, 1, 2]")
    try:
        seed_values = seeds(",".join(map(str, seed_list)))
    except SettingError as err:
        raise SettingError(f"seeds={seed_list!r} {err}") from None

    raws = {key: (f"settings.{key}", _text(value)) for key, value in fixed.items()}
    raws["tracker_backend"] = ("TRACKER_BACKEND", tracker_backend)
    raws |= {s.dest: (s.env, os.environ[s.env]) for s in SETTINGS if not s.has_flag and os.environ.get(s.env)}
    configurations = []
    for point in itertools.product(*grid.values()):
        values = dict(zip(grid, point))
        point_model = values.get("model", model)
        experiment = "_".join([name] + [_label(v) if k == "model" else f"{k}{_label(v)}" for k, v in values.items()])
        given = raws | {k: (f"grid.{k}", _text(v)) for k, v in values.items() if k != "model"}
        given["experiment_name"] = ("name", experiment)
        given["seeds"] = ("seeds", ",".join(map(str, seed_values)))
        configurations.append(Configuration(point_model, values, settings_of(point_model, given), name))
    if len({c.quality for c in configurations}) > 1:
        raise SettingError(
            "the grid mixes regression and classification data sets, whose figures (r2, accuracy) cannot be "
            "ranked together; make one sweep of each"
        )
    return Sweep(name, seed_values, grid, configurations)
