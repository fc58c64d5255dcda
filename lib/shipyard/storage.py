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
segment and deletes them, so the number of files stays bounded. An entry's file is created, never
replaced (`StateDir.create`: a hard link on a disk, a conditional put on S3), so of two writers
alive at once exactly one gets each entry number; the other is fenced and stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shipyard.errors import ConfigError, Fenced, StorageError

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


def _link_new(path: Path, data: bytes) -> bool:
    """Create `path` whole, only if it does not exist (link(2) never replaces a name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


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
        self._s3: Any = None  # a boto3 client, made on the first conditional put (S3 only)

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

    def create(self, rel: str, data: str | bytes) -> bool:
        """Write `rel` only if nothing is there yet: True if this call created it, False if it
        existed (another writer's, left as it was). Atomic on a local disk (a temporary file
        hard-linked to the name) and on S3 (a put with `If-None-Match: *`); on other stores a
        check, then a write (a race inside one write's time is not detected there)."""
        raw = data.encode() if isinstance(data, str) else data
        try:
            if self.local:
                return _link_new(Path(self.path(rel)), raw)
            if self.uri.startswith("s3://"):
                return self._s3_put_new(self.path(rel), raw)
            if self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound:
                return False
            self.write(rel, raw)
            return True
        except OSError as err:
            raise StorageError(f"could not write {self.uri}/{rel}: {err}") from None

    def _s3_client(self) -> Any:
        """boto3 for what pyarrow's S3 filesystem cannot do (a conditional put, a batched
        delete); the endpoint and credentials come from the same environment."""
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3", region_name=getattr(self.fs, "region", None) or None)
        return self._s3

    def _s3_put_new(self, path: str, raw: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = path.partition("/")
        for attempt in range(5):
            try:
                self._s3_client().put_object(Bucket=bucket, Key=key, Body=raw, IfNoneMatch="*")
                return True
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 412:  # there already: another writer's
                    return False
                if status != 409 or attempt == 4:  # 409: a concurrent conditional put, retried
                    raise OSError(str(err)) from None
                time.sleep(0.05 * (attempt + 1))
            except BotoCoreError as err:
                raise OSError(str(err)) from None
        return False  # not reached

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

    def delete(self, rels: Iterable[str]) -> None:
        """Files, those missing included (on S3 in batches of 1,000: one request each)."""
        paths = [self.path(rel) for rel in rels]
        try:
            if self.uri.startswith("s3://") and len(paths) > 1:
                self._s3_delete(paths)
                return
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(path)
        except OSError as err:
            raise StorageError(f"could not delete under {self.uri}: {err}") from None

    def _s3_delete(self, paths: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for i in range(0, len(paths), 1000):
            chunk = paths[i : i + 1000]
            bucket = chunk[0].partition("/")[0]
            keys = [{"Key": p.partition("/")[2]} for p in chunk]
            try:
                out = self._s3_client().delete_objects(
                    Bucket=bucket, Delete={"Objects": keys, "Quiet": True}
                )
            except (BotoCoreError, ClientError) as err:
                raise OSError(str(err)) from None
            if out.get("Errors"):
                raise OSError(f"{len(out['Errors'])} not deleted: {out['Errors'][0]}")

    def remove_if_empty(self, rel: str) -> None:
        """A local folder left empty (object stores have none: a prefix with no objects)."""
        if self.local:
            with contextlib.suppress(OSError):  # not empty (another writer's file), or gone
                os.rmdir(self.path(rel))


_SINGLE = re.compile(r"^(\d{12})\.json$")
_SEGMENT = re.compile(r"^(\d{12})-(\d{12})\.jsonl$")
_FOLDER = re.compile(r"^(open|block)-(\d{12})$")  # open-: one writer's run (before blocks)
BLOCK = 256  # entries per folder: an entry's folder follows from its number alone


def _entry_path(seq: int) -> str:
    return f"block-{(seq - 1) // BLOCK * BLOCK + 1:012d}/{seq:012d}.json"


class Journal:
    """A write-ahead log of numbered entries in a `StateDir`.

    `append` creates one entry as one file (`block-<first>/<seq>.json`: the path follows from the
    number alone) and only then returns its number, so a caller that acknowledges after `append`
    never acknowledges what storage does not hold. The file is created, never replaced: if it is
    there already, another writer took that number, and this one is fenced (`Fenced`, and every
    later append refused) instead of overwriting it. `compact()` (once a snapshot covers every
    entry) merges the entries into one segment (`<first>-<last>.jsonl`), written from memory,
    then deletes exactly the files it merged (on S3 in one batched request) and the folders
    they leave empty; a crash in between leaves both, and `load` reads each entry once. `trim`
    drops the oldest segments while the newer ones still weigh `keep` (e.g. hold that many
    requests).
    """

    def __init__(self, folder: StateDir) -> None:
        self.dir = folder
        self.seq = 0
        self.fenced = False
        self._singles: list[tuple[str, dict[str, Any]]] = []  # (path, entry): not yet compacted
        self._segments: list[tuple[str, int]] = []  # (file name, weight), oldest first

    def load(self, weight: Callable[[dict[str, Any]], int] = lambda e: 1) -> list[dict[str, Any]]:
        """Every entry on storage, oldest first; also where the next `append` continues."""
        entries: dict[int, dict[str, Any]] = {}
        self._singles, self._segments = [], []
        for name in self.dir.files():
            if _SEGMENT.match(name):
                rows = [json.loads(x) for x in (self.dir.read(name) or b"").splitlines() if x]
                entries.update((int(e["seq"]), e) for e in rows)
                self._segments.append((name, sum(weight(e) for e in rows)))
        merged = max(entries, default=0)  # compaction is cumulative: everything up to it
        done: list[str] = []  # merged (or merged and trimmed), not yet deleted: a crash's leftovers
        for folder in self.dir.folders():
            if not _FOLDER.match(folder):
                continue
            for name in self.dir.files(folder):
                if not _SINGLE.match(name):
                    continue
                path = f"{folder}/{name}"
                if int(name[:12]) <= merged:
                    done.append(path)
                elif (raw := self.dir.read(path)) is not None:
                    entry = json.loads(raw)
                    entries[int(entry["seq"])] = entry
                    self._singles.append((path, entry))
        self._singles.sort(key=lambda pe: int(pe[1]["seq"]))
        self.seq = max(entries, default=0)
        if done:
            self._drop(done)
        return [entries[k] for k in sorted(entries)]

    def append(self, entry: dict[str, Any]) -> int:
        """Write the next entry; StorageError (and nothing written) if storage refused it,
        Fenced if another writer holds that number (this journal then writes no more)."""
        if self.fenced:
            raise Fenced(f"journal {self.dir.uri}: another writer appended to it; this one stopped")
        seq = self.seq + 1
        entry = {"seq": seq, **entry}
        path = _entry_path(seq)
        if not self.dir.create(path, json.dumps(entry, default=str)):
            self.fenced = True
            raise Fenced(
                f"journal {self.dir.uri}: entry {seq} was written by another writer (a second "
                "store replica alive at once?); this one stops writing and leaves it as it is"
            )
        self.seq = seq
        self._singles.append((path, entry))
        return seq

    @property
    def pending(self) -> int:
        """Single-entry files not yet merged into a segment."""
        return len(self._singles)

    def compact(self, weight: Callable[[dict[str, Any]], int] = lambda e: 1) -> None:
        """Merge every open entry into one segment; call it once a snapshot covers them all."""
        if not self._singles:
            return
        entries = [e for _, e in self._singles]
        first, last = int(entries[0]["seq"]), int(entries[-1]["seq"])
        name = f"{first:012d}-{last:012d}.jsonl"
        self.dir.write(name, "".join(json.dumps(e, default=str) + "\n" for e in entries))
        self._segments.append((name, sum(weight(e) for e in entries)))
        paths = [p for p, _ in self._singles]
        self._singles = []
        self._drop(paths)

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

    def _drop(self, paths: list[str]) -> None:
        """Entry files a segment holds: deleted by name (never a folder another writer may be
        adding to), then the folders they leave empty."""
        try:
            self.dir.delete(paths)
            for folder in sorted({p.split("/", 1)[0] for p in paths}):
                self.dir.remove_if_empty(folder)
        except StorageError as err:  # harmless: load() reads each entry once
            logger.warning("journal: %s (will be tidied at the next load)", err)
