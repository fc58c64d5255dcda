"""Writing state so that a crash leaves the old version or the new one, never half of either, and
logs that stay bounded."""

from __future__ import annotations

import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class JsonLines:
    """An append-only JSON-lines log kept in segments, so that neither disk nor a restart grows
    with its history: `path` takes lines until it holds `max_bytes`, then becomes `path.1` (older
    segments shift up; beyond `keep` they are deleted). `tail(n)` reads the newest segments only,
    as many as hold the last `n` lines."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep

    def segments(self) -> list[Path]:
        """Newest first."""
        older = [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.keep + 1)]
        return [p for p in [self.path, *older] if p.exists()]

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self.path.open("a") as fh:
            fh.write("".join(json.dumps(r, default=str) + "\n" for r in rows))
            full = fh.tell() >= self.max_bytes
        if full:
            self._rotate()

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            seg = self.path.with_name(f"{self.path.name}.{i}")
            if seg.exists():
                os.replace(seg, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The last `n` rows, oldest first; a torn last line (a crash mid-write) is skipped."""
        chunks: list[list[dict[str, Any]]] = []
        wanted = n
        for seg in self.segments():
            if wanted <= 0:
                break
            with seg.open() as fh:
                lines = collections.deque(fh, maxlen=wanted)
            rows = []
            for line in lines:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            chunks.append(rows)
            wanted -= len(rows)
        return [row for rows in reversed(chunks) for row in rows]
