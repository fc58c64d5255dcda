"""Serving state by URI: a folder on a local disk or on an object store, written so that a crash
leaves the old version of a file or the new one, never half of either.

`StateDir` names the folder (`/var/lib/shipyard`, `s3://bucket/prefix`, `gs://bucket/prefix`)
and reaches it through pyarrow's filesystems, as training checkpoints are; credentials and the
endpoint come from the usual environment (`AWS_ENDPOINT_URL` for an S3-compatible server). Every
write replaces one whole file: a temporary file renamed over it on a disk, one object put on an
object store (an object is visible whole or not at all). Nothing is appended in place, because
object stores cannot append.

`Journal` is a numbered write-ahead log made of such files: each entry is one file, so an entry
that was acknowledged is on storage; compaction merges the entries a snapshot covers into one
segment and deletes them, so the number of files stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shipyard.errors import ConfigError, StorageError

logger = logging.getLogger(__name__)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` atomically: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateDir:
    """A folder of state named by a local path or an object-store URI."""

    def __init__(self, uri: str | os.PathLike[str], *, _fs: pafs.FileSystem | None = None) -> None:
        text = os.fspath(uri)
        if _fs is not None:
            self.uri, self.fs, self.root = text, _fs, text.split("://", 1)[-1].rstrip("/")
        else:
            if "://" not in text:
                text = str(Path(text).expanduser().resolve())
            try:
                fs, root = pafs.FileSystem.from_uri(text)
            except (pa.ArrowInvalid, OSError, ValueError) as err:
                raise ConfigError(
                    f"state_uri: cannot open {os.fspath(uri)!r} ({err}); accepted: a local path, "
                    "s3://bucket/prefix or gs://bucket/prefix"
                ) from None
            self.uri, self.fs, self.root = text, fs, root.rstrip("/")
            if not self.root:
                raise ConfigError(
                    f"state_uri: {text!r} names no bucket; accepted: s3://bucket/prefix, "
                    "gs://bucket/prefix or a local path"
                )
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"StateDir({self.uri!r})"

    def child(self, rel: str) -> StateDir:
        root = f"{self.root}/{rel}"
        scheme = "" if self.local else f"{self.uri.split('://', 1)[0]}://"
        sub = StateDir(f"{scheme}{root}", _fs=self.fs)
        sub.root = root
        return sub

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (what pyarrow, Ray Data and pandas take with `fs`)."""
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str = "") -> Path | None:
        return Path(self.path(rel)) if self.local else None

    def write(self, rel: str, data: str | bytes) -> None:
        """Replace `rel` whole; StorageError if storage refused it (nothing was changed)."""
        try:
            if self.local:
                write_atomic(Path(self.path(rel)), data)
            else:
                with self.fs.open_output_stream(self.path(rel)) as fh:
                    fh.write(data.encode() if isinstance(data, str) else data)
        except OSError as err:
            raise StorageError(f"could not write {self.uri}/{rel}: {err}") from None

    def write_table(self, rel: str, table: pa.Table) -> None:
        """One Parquet file, replaced whole (a local file is written aside and renamed)."""
        try:
            if self.local:
                dest = Path(self.path(rel))
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                pq.write_table(table, tmp)
                os.replace(tmp, dest)
            else:
                pq.write_table(table, self.path(rel), filesystem=self.fs)
        except OSError as err:
            raise StorageError(f"could not write {self.uri}/{rel}: {err}") from None

    def read(self, rel: str) -> bytes | None:
        """The bytes of `rel`, or None where it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as fh:
                data: bytes = fh.read()
                return data
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StorageError(f"could not read {self.uri}/{rel}: {err}") from None

    def files(self, rel: str = "") -> list[str]:
        """Names of the files directly under `rel`, sorted (temporary files left out)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        except OSError as err:
            raise StorageError(f"could not list {self.uri}/{rel}: {err}") from None
        return sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )

    def folders(self, rel: str = "") -> list[str]:
        """Names of the folders directly under `rel`, sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        except OSError as err:
            raise StorageError(f"could not list {self.uri}/{rel}: {err}") from None
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete_folder(self, rel: str) -> None:
        """A folder and everything in it (an object store: batched deletes, not one a file)."""
        try:
            self.fs.delete_dir(self.path(rel))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StorageError(f"could not delete {self.uri}/{rel}: {err}") from None

    def delete(self, rels: Iterable[str]) -> None:
        try:
            for rel in rels:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(self.path(rel))
        except OSError as err:
            raise StorageError(f"could not delete under {self.uri}: {err}") from None


_SINGLE = re.compile(r"^(\d{12})\.json$")
_SEGMENT = re.compile(r"^(\d{12})-(\d{12})\.jsonl$")
_OPEN = re.compile(r"^open-(\d{12})$")


class Journal:
    """A write-ahead log of numbered entries in a `StateDir`.

    `append` writes one entry as one file (`open-<first>/<seq>.json`) and only then returns its
    number, so a caller that acknowledges after `append` never acknowledges what storage does not
    hold. `compact()` (once a snapshot covers every entry) merges the open entries into one
    segment (`<first>-<last>.jsonl`), written from memory, then deletes their folder in one
    batched request; a crash in between leaves both, and `load` reads each entry once. `trim`
    drops the oldest segments while the newer ones still weigh `keep` (e.g. hold that many
    requests).
    """

    def __init__(self, folder: StateDir) -> None:
        self.dir = folder
        self.seq = 0
        self._open: str | None = None  # the folder new entries go to
        self._singles: list[dict[str, Any]] = []  # written, not yet compacted
        self._segments: list[tuple[str, int]] = []  # (file name, weight), oldest first

    def load(self, weight: Callable[[dict[str, Any]], int] = lambda e: 1) -> list[dict[str, Any]]:
        """Every entry on storage, oldest first; also where the next `append` continues."""
        entries: dict[int, dict[str, Any]] = {}
        self._singles, self._segments, self._open = [], [], None
        for name in self.dir.files():
            if _SEGMENT.match(name):
                rows = [json.loads(x) for x in (self.dir.read(name) or b"").splitlines() if x]
                entries.update((int(e["seq"]), e) for e in rows)
                self._segments.append((name, sum(weight(e) for e in rows)))
        segmented = set(entries)
        for folder in self.dir.folders():
            if not _OPEN.match(folder):
                continue
            names = [n for n in self.dir.files(folder) if _SINGLE.match(n)]
            if names and all(int(n[:12]) in segmented for n in names):
                self._tidy(folder)  # compacted; its delete did not happen
                continue
            for name in names:
                raw = self.dir.read(f"{folder}/{name}")
                if raw is not None and int(name[:12]) not in segmented:
                    entry = json.loads(raw)
                    entries[int(entry["seq"])] = entry
                    self._singles.append(entry)
            self._open = folder  # the newest holds what is appended next (sorted names)
        self._singles.sort(key=lambda e: int(e["seq"]))
        self.seq = max(entries, default=0)
        return [entries[k] for k in sorted(entries)]

    def append(self, entry: dict[str, Any]) -> int:
        """Write the next entry; StorageError (and nothing written) if storage refused it."""
        seq = self.seq + 1
        folder = self._open or f"open-{seq:012d}"
        entry = {"seq": seq, **entry}
        self.dir.write(f"{folder}/{seq:012d}.json", json.dumps(entry, default=str))
        self.seq, self._open = seq, folder
        self._singles.append(entry)
        return seq

    @property
    def pending(self) -> int:
        """Single-entry files not yet merged into a segment."""
        return len(self._singles)

    def compact(self, weight: Callable[[dict[str, Any]], int] = lambda e: 1) -> None:
        """Merge every open entry into one segment; call it once a snapshot covers them all."""
        if not self._singles:
            return
        first, last = int(self._singles[0]["seq"]), int(self._singles[-1]["seq"])
        name = f"{first:012d}-{last:012d}.jsonl"
        self.dir.write(name, "".join(json.dumps(e, default=str) + "\n" for e in self._singles))
        self._segments.append((name, sum(weight(e) for e in self._singles)))
        self._singles = []
        folders = [f for f in self.dir.folders() if _OPEN.match(f)]
        self._open = None  # the next entry opens a new folder
        for folder in folders:
            self._tidy(folder)

    def trim(self, keep: int) -> None:
        """Delete the oldest segments that the newer ones make unnecessary."""
        total, cut = 0, 0
        for i in range(len(self._segments) - 1, -1, -1):
            total += self._segments[i][1]
            if total >= keep:
                cut = i
                break
        if cut > 0:
            old, self._segments = self._segments[:cut], self._segments[cut:]
            try:
                self.dir.delete([name for name, _ in old])
            except StorageError as err:  # harmless: the next load reads each entry once
                logger.warning("journal: %s", err)

    def _tidy(self, folder: str) -> None:
        try:
            self.dir.delete_folder(folder)
        except StorageError as err:  # harmless: load() reads each entry once
            logger.warning("journal: %s (will be tidied at the next load)", err)
