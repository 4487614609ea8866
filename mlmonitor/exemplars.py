"""Exemplars in multiprocess mode: one fixed-size file of checked slots per worker.

prometheus-client drops exemplars when ``PROMETHEUS_MULTIPROC_DIR`` is set, so each
worker keeps its own in ``exemplars_<pid>.db`` beside the value files:

* a header and ``SLOTS`` slots of ``SLOT_SIZE`` bytes; a bucket's slot is the crc32 of its
  key, the newest exemplar overwrites it (a collision too), so the file never grows;
* each slot is length + crc32 + payload, written with one ``pwrite``: a worker killed
  mid-write, or bytes corrupted later, cost that slot only, and the reader counts it;
* a bucket's key (sample name and labels as JSON) too long for a slot (capped labels can
  reach ~1.5 kB) is stored as ``#`` and its blake2b digest, matched at the scrape by digest;
* only regular files are read, opened without blocking: a FIFO or a device named like
  an exemplar file is a counted fault, never a hung scrape;
* the whole file is allocated when the worker first writes an exemplar: a full disk
  fails there once (the caller counts it and stops), never inside a later request;
* the scrape reads every worker's file and the dead workers' merged file, newest
  exemplar per bucket wins, and exemplars older than ``MAX_AGE`` are left out;
* when a worker dies, the master folds its file into ``exemplars_merged.db`` (written
  whole, renamed) and removes it, so files do not pile up with worker restarts; without
  the master's hooks (``uvicorn --workers``) a scrape removes a dead worker's file once
  everything in it is older than ``MAX_AGE``.

Standard library only: the multiprocess storage imports this module, not the reverse.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any

__all__ = ["FILE", "SLOTS", "SLOT_SIZE", "FILE_SIZE", "MAX_AGE", "Found", "ExemplarFile", "read_file",
           "read_all", "merge_dead", "BadExemplarFile"]

#: a worker's file, or the dead workers' merged one (and the merge's temporary file)
FILE = re.compile(r"exemplars_([0-9]+|merged)\.db")
MAGIC = b"MLMEX1\n\0"
SLOTS = 2048
SLOT_SIZE = 512
_HEAD = struct.Struct("<8sII")
_SLOT_HEAD = struct.Struct("<II")  # payload length, crc32 of the payload
_VALUES = struct.Struct("<dd")  # observed value, unix time
FILE_SIZE = _HEAD.size + SLOTS * SLOT_SIZE
#: the payload: value and time, 32 + 16 hex digits of trace and span id, then the bucket's key
_IDS = 48
_MAX_KEY = SLOT_SIZE - _SLOT_HEAD.size - _VALUES.size - _IDS
#: seconds after which an exemplar is no longer served (a dead worker's, a series gone quiet)
MAX_AGE = 600.0
_HEX = re.compile(rb"[0-9a-f]{48}")

#: (sample name, sorted label pairs with ``le``) -> (trace id, span id, value, unix time)
Found = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str, float, float]]


class BadExemplarFile(ValueError):
    """The file is not an exemplar file of this layout; none of it can be read."""


def _reserve(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC, EDQUOT, EIO
    os.ftruncate(fd, size)


def _slot_of(key: bytes) -> int:
    return zlib.crc32(key) % SLOTS


def encode(key: bytes, trace_id: str, span_id: str, value: float, timestamp: float) -> bytes:
    """One slot's bytes (shorter than the slot: the rest of it is never read)."""
    payload = _VALUES.pack(value, timestamp) + (trace_id + span_id).encode("ascii") + key
    return _SLOT_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _key(sample: str, labels: dict[str, str]) -> bytes:
    return json.dumps([sample, labels], sort_keys=True, ensure_ascii=False).encode("utf-8", "replace")


def _digest(key: bytes) -> bytes:
    """What a slot holds for a key too long for it (never JSON: it starts with ``#``)."""
    return b"#" + hashlib.blake2b(key, digest_size=16).hexdigest().encode("ascii")


def bucket_keys(name: str, labels: dict[str, str], bounds: Iterable[str]) -> list[tuple[int, bytes] | None]:
    """(slot, key) per bucket of one histogram series: the sample name and labels, with
    ``le``, as the multiprocess collector writes them (their digest if too long)."""
    keys: list[tuple[int, bytes] | None] = []
    for le in bounds:
        key = _key(name + "_bucket", {**labels, "le": le})
        keys.append((_slot_of(key), key if len(key) <= _MAX_KEY else _digest(key)))
    return keys


def open_regular(name: str) -> int:
    """A read-only descriptor of ``name`` if it is a regular file, not a link (a FIFO would block a plain
    ``open``, a device never end); OSError otherwise."""
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", os.path.basename(name))
    return fd


class ExemplarFile:
    """A worker's own exemplar file, opened and allocated at its first write.

    ``write`` raises OSError (the caller counts it); after a failed creation it
    stays off in this process, so a full disk costs one fault, not one a request.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.pid = 0
        self.failed = False
        self._lock = threading.Lock()

    def open(self) -> None:
        """A fresh file for this process (a forked child gets its own); the old one is closed
        after the new one is in place, so a write meanwhile goes to one or the other."""
        name = os.path.join(self.path, f"exemplars_{os.getpid()}.db")
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            _reserve(fd, FILE_SIZE)
            os.pwrite(fd, _HEAD.pack(MAGIC, SLOTS, SLOT_SIZE), 0)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        old, inherited = self.fd, self.pid != os.getpid()
        self.fd, self.pid = fd, os.getpid()
        if old >= 0 and not inherited:
            os.close(old)

    def write(self, slot: int, key: bytes, trace_id: str, span_id: str, value: float) -> None:
        if self.pid != os.getpid():
            with self._lock:
                if self.failed:
                    return
                if self.pid != os.getpid():
                    try:
                        self.open()
                    except OSError:
                        self.failed = True
                        raise
        os.pwrite(self.fd, encode(key, trace_id, span_id, value, time.time()),
                  _HEAD.size + slot * SLOT_SIZE)

    def reopen_if_gone(self) -> bool:
        """The file was deleted under this worker (directory removed): start a new one.
        OSError if it cannot be made (then exemplars stay off in this process)."""
        if (self.failed or self.pid != os.getpid()
                or os.path.exists(os.path.join(self.path, f"exemplars_{self.pid}.db"))):
            return False
        with self._lock:
            try:
                self.open()
            except OSError:
                self.failed = True
                raise
        return True


Key = tuple[str, tuple[tuple[str, str], ...]]
_keys: dict[bytes, Key | None] = {}  # keys parsed before: a scrape parses each once
_DIGEST = re.compile(rb"#[0-9a-f]{32}")


def _parse_key(raw: bytes) -> Key | None:
    """(sample name, sorted label pairs) of a well-formed key, ``(digest, ())`` for a long
    key's digest, else None."""
    if raw in _keys:
        return _keys[raw]
    if _DIGEST.fullmatch(raw):
        return (raw.decode("ascii"), ())
    result = None
    try:
        name, labels = json.loads(raw.decode("utf-8"))
        pairs = tuple(sorted(labels.items()))
        if isinstance(name, str) and all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            result = (name, pairs)
    except (ValueError, TypeError, AttributeError):
        result = None
    if len(_keys) > 20_000:
        _keys.clear()
    _keys[raw] = result
    return result


def _decode(payload: bytes) -> tuple[Key, tuple[str, str, float, float]] | None:
    """A checked slot's (key, exemplar), or None if its content is not one."""
    if len(payload) <= _VALUES.size + _IDS:
        return None
    value, timestamp = _VALUES.unpack_from(payload)
    ids = payload[_VALUES.size:_VALUES.size + _IDS]
    key = _parse_key(payload[_VALUES.size + _IDS:])
    if key is None or value != value or not _HEX.fullmatch(ids):
        return None
    text = ids.decode("ascii")
    return key, (text[:32], text[32:], value, timestamp)


def read_file(name: str, found: Found, oldest: float) -> int:
    """Add the file's exemplars newer than ``oldest`` to ``found`` (newest wins); returns the
    bad slots. BadExemplarFile if the file is not one; FileNotFoundError if it is gone."""
    with open(open_regular(name), "rb") as fh:
        data = fh.read(FILE_SIZE + 1)
    if not data or data[:_HEAD.size] == bytes(_HEAD.size):
        return 0  # a worker's file being made: nothing in it yet
    if len(data) != FILE_SIZE or _HEAD.unpack_from(data) != (MAGIC, SLOTS, SLOT_SIZE):
        raise BadExemplarFile(f"{os.path.basename(name)}: not an exemplar file of this layout")
    bad = 0
    limit = SLOT_SIZE - _SLOT_HEAD.size
    for offset in range(_HEAD.size, FILE_SIZE, SLOT_SIZE):
        length, crc = _SLOT_HEAD.unpack_from(data, offset)
        if length == 0 and crc == 0:
            continue  # never written
        payload = data[offset + _SLOT_HEAD.size:offset + _SLOT_HEAD.size + length]
        decoded = _decode(payload) if length <= limit and zlib.crc32(payload) == crc else None
        if decoded is None:
            bad += 1
            continue
        key, exemplar = decoded
        if exemplar[3] >= oldest:
            old = found.get(key)
            if old is None or old[3] < exemplar[3]:
                found[key] = exemplar
    return bad


def read_all(path: str, now: float | None = None) -> tuple[Found, list[tuple[str, int | str]]]:
    """Every worker's exemplars (live and dead), newest per bucket, and the faults met:
    (file name, bad slots) or (file name, why the whole file was left out)."""
    oldest = (time.time() if now is None else now) - MAX_AGE
    found: Found = {}
    faults: list[tuple[str, int | str]] = []
    for base in sorted(os.listdir(path)):
        match = FILE.fullmatch(base)
        if match is None or _remove_if_stale(path, base, match.group(1), oldest):
            continue
        try:
            bad = read_file(os.path.join(path, base), found, oldest)
        except FileNotFoundError:
            continue  # a dead worker's, merged meanwhile
        except (BadExemplarFile, OSError) as exc:
            faults.append((base, str(exc)))
            continue
        if bad:
            faults.append((base, bad))
    return found, faults


def _remove_if_stale(path: str, base: str, ident: str, oldest: float) -> bool:
    """Remove a dead worker's file with nothing left to serve (last written before ``oldest``):
    without gunicorn's hooks (``uvicorn --workers``) nobody else would, and each restart adds one."""
    name = os.path.join(path, base)
    try:
        info = os.lstat(name)
        if ident == "merged" or not stat.S_ISREG(info.st_mode) or info.st_mtime >= oldest:
            return False
        os.kill(int(ident), 0)
    except ProcessLookupError:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
        return True
    except OSError:  # gone meanwhile, or alive under another user: read as usual
        return False
    return False  # alive: its file is made again if deleted, never removed here


def attach(metrics: Iterable[Any], found: Found) -> None:
    """Put each bucket's exemplar on its sample (prometheus-client's ``Sample.exemplar``)."""
    if not found:
        return
    from prometheus_client.samples import Exemplar  # noqa: PLC0415 (lazily: gunicorn imports storage first)
    digests = any(not pairs for _name, pairs in found)
    for metric in metrics:
        if metric.type != "histogram":
            continue
        samples = metric.samples
        for i, sample in enumerate(samples):
            if not sample.name.endswith("_bucket"):
                continue
            hit = found.get((sample.name, tuple(sorted(sample.labels.items()))))
            if hit is None and digests:
                key = _key(sample.name, sample.labels)
                hit = found.get((_digest(key).decode("ascii"), ())) if len(key) > _MAX_KEY else None
            if hit is not None:
                trace_id, span_id, value, timestamp = hit
                samples[i] = sample._replace(exemplar=Exemplar(
                    {"trace_id": trace_id, "span_id": span_id}, value, timestamp))


def merge_dead(path: str, pid: int) -> tuple[bool, list[tuple[str, int | str]]]:
    """Fold a dead worker's exemplars into ``exemplars_merged.db`` and remove its file.

    Run by the master under the directory's exclusive lock. Returns whether a file was
    removed and the faults met; OSError (a full disk) when the merged file cannot be
    written, after the dead worker's file is removed all the same (exemplars are a hint:
    they may be lost, never grow the directory).
    """
    dead = os.path.join(path, f"exemplars_{pid}.db")
    if not os.path.exists(dead):
        return False, []
    merged = os.path.join(path, "exemplars_merged.db")
    found: Found = {}
    faults: list[tuple[str, int | str]] = []
    oldest = time.time() - MAX_AGE
    for name in (merged, dead):
        try:
            bad = read_file(name, found, oldest)
        except FileNotFoundError:
            continue
        except (BadExemplarFile, OSError) as exc:
            faults.append((os.path.basename(name), str(exc)))
            continue
        if bad:
            faults.append((os.path.basename(name), bad))
    try:
        _write_whole(merged, found)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(dead)
    return True, faults


def _write_whole(name: str, found: Found) -> None:
    """A complete exemplar file of ``found`` (newest first into a shared slot), renamed into place."""
    data = bytearray(FILE_SIZE)
    _HEAD.pack_into(data, 0, MAGIC, SLOTS, SLOT_SIZE)
    taken: set[int] = set()
    for (sample, pairs), (trace_id, span_id, value, timestamp) in sorted(
            found.items(), key=lambda item: -item[1][3]):
        key = _key(sample, dict(pairs)) if pairs else sample.encode("ascii")  # or a long key's digest
        slot = _slot_of(key)
        if slot in taken or len(key) > _MAX_KEY:
            continue
        taken.add(slot)
        chunk = encode(key, trace_id, span_id, value, timestamp)
        offset = _HEAD.size + slot * SLOT_SIZE
        data[offset:offset + len(chunk)] = chunk
    tmp = f"{name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.rename(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
