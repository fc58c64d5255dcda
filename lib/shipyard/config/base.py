"""What every config shares: strict models, YAML loading, dotted overrides, named errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shipyard.errors import ConfigError


class Strict(BaseModel):
    """A config section: unknown keys are refused, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors(include_url=False):
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the config reference in docs/training.md or docs/serving.md)"
        bad = e.get("input")
        shown = "" if e["type"] in ("missing",) else f" (got {bad!r})"
        if isinstance(bad, dict) and e["type"] != "extra_forbidden":
            shown = ""
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(raw: Any, model: type[Strict], source: str = "<dict>") -> Any:
    """Validate an already-parsed mapping against a config model."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"invalid config {source}: the top level must be a mapping of keys "
            f"(got {type(raw).__name__})"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def set_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply `a.b.c=value` to a nested mapping (creating sections as needed)."""
    node = raw
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {p!r} is not a section")
        node = child
    node[leaf] = value


def load_yaml(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {problem}") from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` arguments -> {dotted key: YAML-parsed value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.num_workers=2")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def load_config(
    path: str | os.PathLike[str], model: type[Strict], overrides: dict[str, Any] | None = None
) -> Any:
    """Load a YAML config, apply dotted overrides, validate it against `model`."""
    raw = load_yaml(path)
    if isinstance(raw, dict):
        for key, value in (overrides or {}).items():
            set_override(raw, key, value)
    return parse_config(raw, model, source=str(path))
