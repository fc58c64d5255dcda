"""A traffic change is saved at once or undone, and its events are sent only once it is saved.

The experiment makes every change of its traffic table (a PUT /variants, a `serve deploy`, a
guardrail rollback, a promotion) inside `with changes():`. The fields a change may touch are
copied when the outermost change begins; when it ends, the experiment's state is saved (a
forced snapshot). If anything inside raises, the StorageError of that save included, every field
is put back and the events it emitted are dropped, so a refused change leaves live traffic, the
statistics and the event log as they were. Changes nest (a rollback sets traffic): only the
outermost saves and sends.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any


class Changes:
    """The traffic changes of one object: `fields` of `target`, `save` to keep them, `send`
    for their events."""

    def __init__(
        self,
        target: object,
        fields: tuple[str, ...],
        save: Callable[[], None],
        send: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.target = target
        self.fields = fields
        self.save = save
        self.send = send
        self.depth = 0  # nesting of changes in progress
        self.outbox: list[tuple[str, dict[str, Any]]] = []  # events waiting for the save

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.depth += 1
        if self.depth > 1:
            try:
                yield
            finally:
                self.depth -= 1
            return
        before = copy.deepcopy({k: getattr(self.target, k) for k in self.fields})
        try:
            yield
            self.save()
        except BaseException:
            for k, v in before.items():
                setattr(self.target, k, v)
            self.outbox.clear()
            raise
        finally:
            self.depth -= 1
        outbox, self.outbox = self.outbox, []
        for kind, data in outbox:
            self.send(kind, data)

    def emit(self, kind: str, **data: Any) -> None:
        """An event: held until the change in progress is saved, sent at once outside one."""
        if self.depth:
            self.outbox.append((kind, data))
        else:
            self.send(kind, data)
