"""What a traffic change does to the registry's aliases: a promoted variant's version becomes
`champion` (the one it replaces `previous_champion`, and a `challenger` alias on it goes), and a
rolled-back treatment loses its `challenger` alias. The registry is written before traffic
moves, so a registry that refuses leaves live traffic as it was."""

from __future__ import annotations

from typing import Protocol


class AliasStore(Protocol):
    """What the experiment needs of the registry: read and move aliases."""

    def aliases(self, name: str) -> dict[str, int]: ...
    def set_alias(self, name: str, alias: str, version: int) -> None: ...
    def delete_alias(self, name: str, alias: str) -> None: ...


def crown(store: AliasStore, model: str, version: int) -> None:
    """`version` becomes the champion; the champion before it, `previous_champion`."""
    current = store.aliases(model)
    previous = current.get("champion")
    store.set_alias(model, "champion", version)
    if previous is not None and previous != version:
        store.set_alias(model, "previous_champion", previous)
    if current.get("challenger") == version:
        store.delete_alias(model, "challenger")


def drop(store: AliasStore, model: str, alias: str, version: int) -> None:
    """Delete `alias` if it names `version` (an alias moved elsewhere since is left alone)."""
    if store.aliases(model).get(alias) == version:
        store.delete_alias(model, alias)
