"""The traffic table's rules: what a change may set (weights, shadow shares, control), which
variants are live, and the hash that tells one deployed user_config from another. How a change
is applied is the experiment's (`Experiment.set_traffic`), how it is saved or undone `changes`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shipyard.config.serving import TrafficUpdate
from shipyard.errors import InvalidInput


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def deploy_hash(traffic: dict[str, Any]) -> str:
    """Hash of a user_config after validation, so 90 and 90.0 are the same deployment."""
    return content_hash(TrafficUpdate.model_validate(traffic).model_dump())


def live_weights(weights: dict[str, float], shadow: dict[str, float]) -> dict[str, float]:
    """The variants that take live traffic (a shadow variant never does), by weight."""
    return {n: w for n, w in weights.items() if shadow.get(n, 0) == 0}


def resolve(
    update: TrafficUpdate, weights: dict[str, float], shadow: dict[str, float], control: str
) -> tuple[dict[str, float], dict[str, float], str]:
    """The split after `update` (weights, shadow shares without the zeros, control), or an
    InvalidInput naming the field: an unknown variant, a variant both live and shadow, a shadow
    control, or no live weight left."""
    names = list(weights)
    for field, mapping in (("weights", update.weights), ("shadow", update.shadow)):
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise InvalidInput(f"{field}: unknown variant(s) {unknown}; variants: {names}")
    weights = {**weights, **update.weights}
    shadow = {**shadow, **update.shadow}
    control = update.control or control
    if control not in names:
        raise InvalidInput(f"control: unknown variant {control!r}; variants: {names}")
    for n in names:
        if weights[n] > 0 and shadow.get(n, 0) > 0:
            raise InvalidInput(
                f"weights[{n!r}]={weights[n]} and shadow[{n!r}]={shadow[n]}: a variant is "
                "either live or shadow; set one of them to 0"
            )
    if shadow.get(control, 0) > 0:
        raise InvalidInput(f"control: {control!r} is a shadow variant")
    live = live_weights(weights, shadow)
    if sum(live.values()) <= 0:
        raise InvalidInput(f"weights: at least one live variant needs weight > 0, got {live}")
    return weights, {n: s for n, s in shadow.items() if s > 0}, control
