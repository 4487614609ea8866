"""prometheus-client's multiprocess storage, and every use of its internals, in one place.

Why each part is here:

* the directory: refused when it is a symlink, someone else's or group/world-writable,
  and at a master's start only prometheus-client's own file names (and mlmonitor's)
  are removed from it, never e.g. an app's ``customers.db``;
* the ``.db`` files are read with every key and value checked, so one corrupted file
  costs its own entries, never the whole ``/metrics`` answer;
* a dead worker's counts are merged into ``<type>_merged.db`` by writing a complete
  new file with ordinary writes and renaming it: on a full disk that raises ENOSPC
  (the merge is skipped, the worker's files stay and scrapes still read them) where
  growing a memory map would kill the gunicorn master with SIGBUS. The master keeps
  what it merged in memory and writes it again if the file goes (``rm -rf``);
* prometheus-client's own files get their disk blocks reserved before they are
  mapped, so a full disk raises OSError in a worker (counted) instead of SIGBUS;
* label caps are shared by every process on the directory (one small file per label),
  so worker restarts cannot multiply the number of series;
* exemplars, which prometheus-client drops here, are kept per worker by
  :mod:`mlmonitor.exemplars`: an OpenMetrics scrape puts them on the merged buckets, and
  a dead worker's are folded into one merged file with its counts.

The internals used (MmapedDict's fields, MultiProcessValue's closure, the collector's
accumulation) are probed first; when they differ the features that need them are off.
prometheus-client is imported lazily: gunicorn imports this module before the
directory is set. ``fcntl`` is imported where a lock is taken: multiprocess mode is POSIX-only,
but ``import mlmonitor`` and a single-process monitor also work where there is no ``fcntl``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import mmap
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from . import exemplars, guard
from .contract import COMPONENT, INTERNAL_ERRORS, INTERNAL_ERRORS_HELP, INTERNAL_ERRORS_TOTAL

__all__ = ["ENV", "DB_FILE", "OWN_FILE", "MERGED_KINDS", "multiprocess_dir", "UnsafeDirectory",
           "prepare_multiprocess_dir", "check_directory", "directory_lock", "use_multiprocess_values",
           "restore_deleted_files", "BadFile", "read_db", "write_db", "set_aside", "CheckedCollector",
           "merge_dead_worker", "keep_merged", "master_started", "AdmittedValues"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("mlmonitor")

_MODES = "all|liveall|min|livemin|max|livemax|sum|livesum|mostrecent|livemostrecent"
#: prometheus-client's file names (``<type>_<pid>.db``) and mlmonitor's merged / master files
DB_FILE = re.compile(rf"(counter|histogram|summary|gauge_(?:{_MODES}))_([A-Za-z0-9-]+|master_\d+)\.db")
#: every name mlmonitor may remove: the above, their temp / set-aside copies, the label files
OWN_FILE = re.compile(rf"(?:{DB_FILE.pattern})(?:(?:\.\d+\.\d+)?\.tmp|\.bad)?"
                      r"|mlmonitor_labels_[A-Za-z_][A-Za-z0-9_]*\.jsonl"
                      rf"|(?:{exemplars.FILE.pattern})(?:\.\d+\.tmp)?")
MERGED_KINDS = ("counter", "histogram", "summary")


def multiprocess_dir() -> str | None:
    """The directory of the shared files, if one is set (prometheus-client reads both names)."""
    return os.environ.get(ENV) or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112


# -- the directory ------------------------------------------------------------------------

class UnsafeDirectory(RuntimeError):
    """The multiprocess directory cannot be used safely."""


def prepare_multiprocess_dir(path: str | None = None, clean: bool = True) -> str:
    """Create or check the directory, at master start empty it of old files, and use it."""
    global _created  # noqa: PLW0603 (the directory this master made)
    named = path or multiprocess_dir()
    path = os.path.abspath(named or tempfile.mkdtemp(prefix="mlmonitor-metrics-"))
    if not named:
        _created = (path, os.getpid())
    check_directory(path, clean)
    os.environ[ENV] = path
    if "prometheus_client.values" in sys.modules:  # else metrics.families_for switches it
        use_multiprocess_values()
    return path


def check_directory(path: str, clean: bool = True) -> None:
    """Refuse an unsafe directory with one line; remove old files of ours (not another master's)."""
    def refuse(why: str) -> UnsafeDirectory:
        return UnsafeDirectory(f"mlmonitor: {ENV}={path} {why}")

    if os.path.islink(path):  # lstat: a link can be pointed elsewhere by whoever owns it
        raise refuse("is a symbolic link; give the real directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise refuse("is a symbolic link; give the real directory") from None
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            raise refuse("is not a directory") from None
        raise refuse(f"cannot be created or opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise refuse(f"is owned by uid {info.st_uid}, not by this user ({os.geteuid()})")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise refuse("is group- or world-writable; use a private directory (chmod 700)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise refuse("is not writable")
        if clean and _first_user(path, fd):
            for name in os.listdir(fd):
                if OWN_FILE.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                        os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


_users: dict[str, int] = {}  # directory -> fd holding a shared flock for this master's lifetime
#: (path, pid) of the private temporary directory this process made, removed when it exits
_created: tuple[str, int] | None = None


def remove_created_dir() -> bool:
    """Remove the temporary directory this master made (never one the user named), unless
    another master still uses it (a USR2 upgrade holds its shared lock). True if removed."""
    if _created is None or _created[1] != os.getpid():
        return False
    path = _created[0]
    fd = _users.get(path)
    if fd is not None:
        import fcntl  # noqa: PLC0415 (POSIX only: see the module docstring)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.exists(path)


def _first_user(path: str, dir_fd: int) -> bool:
    """True unless another live master uses the directory (a USR2 upgrade, a second start):
    its workers' files are live counts and must not be cleaned away."""
    import fcntl  # noqa: PLC0415 (POSIX only: see the module docstring)
    if path in _users:
        return True
    fd = os.open(".users", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first = True
    except OSError:
        first = False
    fcntl.flock(fd, fcntl.LOCK_SH)  # held (and inherited by workers) while we serve
    _users[path] = fd
    return first


@contextlib.contextmanager
def directory_lock(path: str, exclusive: bool) -> Iterator[None]:
    """An flock on ``<dir>/.lock``: merges take it exclusively, scrapes shared."""
    import fcntl  # noqa: PLC0415 (POSIX only: see the module docstring)
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# -- prometheus-client's storage: probed, switched on, blocks reserved ------------------------

def _value_internals() -> tuple[dict[str, Any], Any] | None:
    """MultiProcessValue's open files and its lock, or None if prometheus-client differs."""
    try:
        from prometheus_client import values  # noqa: PLC0415 (lazily: see the module docstring)
        cls = values.ValueClass
        reset = cls._MmapedValue__reset
        cells = dict(zip(reset.__code__.co_freevars, reset.__closure__ or (), strict=True))
        inc_cells = dict(zip(cls.inc.__code__.co_freevars, cls.inc.__closure__ or (), strict=True))
        return cells["files"].cell_contents, inc_cells["lock"].cell_contents
    except (AttributeError, KeyError, ValueError, ImportError):
        return None


def use_multiprocess_values() -> None:
    """Make prometheus-client store values in the directory, with reserved disk blocks.

    Also when prometheus-client was imported before the directory was set.
    """
    from prometheus_client import mmap_dict, values  # noqa: PLC0415 (lazily: see the module docstring)
    if getattr(values.ValueClass, "__name__", "") != "MmapedValue":
        values.ValueClass = values.get_value_class()
    base = getattr(values, "MmapedDict", None)
    if (base is mmap_dict.MmapedDict and hasattr(base, "_init_value")
            and isinstance(getattr(mmap_dict, "_INITIAL_MMAP_SIZE", None), int)):
        # the name prometheus-client's values module looks up (imported there, not exported)
        values.MmapedDict = _reserving(base, mmap_dict._INITIAL_MMAP_SIZE)  # type: ignore[attr-defined]


def _reserving(base: Any, initial: int) -> Any:
    class ReservedMmapedDict(base):  # type: ignore[misc]  # the class is probed, so it is Any here
        """prometheus-client's file with its disk blocks reserved before they are mapped.

        Writing a mapped page that has no block behind it on a full disk kills the
        process with SIGBUS; posix_fallocate raises OSError (ENOSPC) instead.
        """

        def __init__(self, filename: str, read_mode: bool = False) -> None:
            if not read_mode:
                fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    try:
                        _reserve(fd, max(size, initial))
                    except OSError:
                        if size == 0:
                            os.unlink(filename)
                        raise
                finally:
                    os.close(fd)
            super().__init__(filename, read_mode)

        def _init_value(self, key: str) -> None:
            needed = self._used + _entry_size(len(key.encode("utf-8")))
            capacity = self._capacity
            while needed > capacity:
                capacity *= 2
            if capacity != self._capacity:
                _reserve(self._f.fileno(), capacity)
            super()._init_value(key)

    return ReservedMmapedDict


def _reserve(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC, EDQUOT, EIO: this value cannot be stored now


def restore_deleted_files() -> int:
    """Files of this process deleted under it (directory removed): write them anew from memory.

    prometheus-client keeps each process's values in a memory map of its file; when the
    file is deleted the map lives on, unseen by scrapes. This writes the map to a temp
    file (ordinary writes: ENOSPC raises, nothing half-written is left under the real
    name), maps that and renames it into place, so counts continue without a restart.
    """
    internals = _value_internals()
    if internals is None:
        return 0
    files, lock = internals
    restored = 0
    for mapped in list(files.values()):
        name = getattr(mapped, "_fname", None)
        if name is None or mapped._m is None or os.path.exists(name):
            continue
        with lock:
            os.makedirs(os.path.dirname(name), mode=0o700, exist_ok=True)
            capacity = mapped._capacity
            tmp = name + ".tmp"
            new_file = None
            try:
                with open(tmp, "wb") as out:
                    out.write(mapped._m[:capacity])
                new_file = open(tmp, "a+b")  # noqa: SIM115 (it stays open behind the new map)
                new_map = mmap.mmap(new_file.fileno(), capacity)
                os.rename(tmp, name)
            except BaseException:
                if new_file is not None:
                    new_file.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            old_file, old_map = mapped._f, mapped._m
            mapped._f, mapped._m = new_file, new_map
            old_map.close()
            old_file.close()
        restored += 1
    return restored


# -- the .db layout, read with every entry checked, written whole ----------------------------

class BadFile(ValueError):
    """The file's layout is broken; none of it can be read."""


Entry = tuple[str, tuple[str, str, tuple[tuple[str, str], ...], str], float, float]


def _entry_size(key_bytes: int) -> int:
    return 4 + key_bytes + (8 - (key_bytes + 4) % 8) + 16


def read_db(name: str, kind: str) -> tuple[list[Entry], int]:
    """The good entries of a ``.db`` file and how many were bad; BadFile if the layout is broken.

    Never hangs or allocates on a bad length: every length is checked against the file.
    An empty or just-created file (size or used 0) has no entries.
    """
    with open(exemplars.open_regular(name), "rb") as fh:  # a FIFO would hang the scrape
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if size == 0 or len(head) < 8 or head[:4] == b"\0\0\0\0":
            return [], 0
        used = struct.unpack_from("i", head)[0]
        if used < 8 or used > size:
            raise BadFile("bad header")
        data = head + fh.read(used - 8)
    if len(data) < used:
        raise BadFile("truncated")
    entries: list[Entry] = []
    bad = 0
    pos = 8
    while pos < used:
        if pos + 4 > used:
            raise BadFile("truncated entry")
        length = struct.unpack_from("i", data, pos)[0]
        end = pos + _entry_size(length) - 16 if length > 0 else used
        if length <= 0 or end + 16 > used:
            raise BadFile("bad entry length")
        raw = data[pos + 4:pos + 4 + length]
        value, timestamp = struct.unpack_from("dd", data, end)
        pos = end + 16
        parsed = _parse_key(kind, raw)
        if parsed is None or not _value_ok(kind, parsed[1], value):
            bad += 1
        else:
            entries.append((raw.decode("utf-8"), parsed, value, timestamp))
    return entries, bad


_parsed: dict[tuple[str, bytes], Any] = {}  # keys checked before: a scrape parses each once
_LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _parse_key(kind: str, raw: bytes) -> Any:
    """``(metric_name, name, labels, help)`` of a well-formed key, else None.

    Well-formed: JSON ``[str, str, {str: str}, str]``, names non-empty (and legacy
    names where prometheus-client is set to insist on them), every string encodable
    (a lone surrogate would fail every later scrape), ``le`` / ``quantile`` a number.
    """
    cache_key = (kind, raw)
    if cache_key in _parsed:
        return _parsed[cache_key]
    result = None
    try:
        from prometheus_client.validation import get_legacy_validation  # noqa: PLC0415 (lazily: see the module docstring)
        metric_name, name, labels, help_text = json.loads(raw.decode("utf-8"))
        texts = [metric_name, name, help_text, *labels.keys(), *labels.values()]
        if all(isinstance(t, str) for t in texts) and metric_name and name and all(labels):
            "\n".join(texts).encode("utf-8")
            legacy = get_legacy_validation()
            number = labels.get("le" if kind == "histogram" else "quantile" if kind == "summary" else "")
            if ((not legacy or (_LEGACY_NAME.fullmatch(metric_name) and _LEGACY_NAME.fullmatch(name)))
                    and (number is None or not math.isnan(float(number)))):
                result = (metric_name, name, tuple(sorted(labels.items())), help_text)
    except (ValueError, TypeError, AttributeError, ImportError):  # not JSON, not 4 items, not a number
        result = None
    if len(_parsed) > 20_000:
        _parsed.clear()
    _parsed[cache_key] = result
    return result


def _value_ok(kind: str, name: str, value: float) -> bool:
    """Counts are never NaN or negative; a sum is never NaN (it would stay NaN once merged)."""
    if kind.startswith("gauge"):
        return True
    return value == value and (value >= 0 or name.endswith("_sum"))


def write_db(name: str, entries: Iterable[tuple[str, float, float]]) -> dict[str, int]:
    """A complete file in prometheus-client's layout, written to a temp name and renamed.

    Ordinary writes: a full disk raises OSError here, where a memory map would SIGBUS.
    Returns each key's value offset (for in-place updates of an allocated block).
    """
    chunks = []
    offsets = {}
    used = 8
    for key, value, timestamp in entries:
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        chunk = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, value, timestamp)
        offsets[key] = used + len(chunk) - 16
        chunks.append(chunk)
        used += len(chunk)
    tmp = f"{name}.{os.getpid()}.{threading.get_ident()}.tmp"  # scrapes may write at once
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("ii", used, 0) + b"".join(chunks))
        os.rename(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return offsets


def set_aside(name: str, good: list[Entry] | None = None) -> None:
    """A bad merged file is kept as ``*.bad`` (not ``*.db``, never read again) and its good
    entries take its place at once, so no scrape sees the merged counts missing. If they
    cannot be written, the file is only set aside; the gunicorn master writes it again."""
    bad = name + ".bad"
    with contextlib.suppress(OSError):
        os.unlink(bad)
    try:
        os.link(name, bad)
        write_db(name, [(key, value, ts) for key, _p, value, ts in good or ()])
    except OSError:
        with contextlib.suppress(OSError):
            os.rename(name, bad)


# -- the scrape ------------------------------------------------------------------------------

class CheckedCollector:
    """prometheus-client's multiprocess merge of every good entry in the directory.

    A bad entry or file is left out and counted (``exposition``); a bad merged file is
    set aside, and the master writes it again from what it merged. Files that are not
    prometheus-client's (an app's ``customers.db``) are not read. With ``exemplars``
    (an OpenMetrics scrape) every worker's exemplars go on the merged buckets; a bad
    exemplar slot or file is left out and counted (``exemplars``).
    """

    def __init__(self, path: str, exemplars: bool = False) -> None:
        self.path = path
        self.exemplars = exemplars

    def collect(self) -> Iterable[Any]:
        from prometheus_client.metrics_core import Metric  # noqa: PLC0415 (lazily: see the module docstring)
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415 (lazily: see the module docstring)
        found: exemplars.Found = {}
        if self.exemplars:  # first: a fault counted here is in this process's files read below
            found, exemplar_faults = exemplars.read_all(self.path)
            for base, why in exemplar_faults:
                guard.report_fault("exemplars", ValueError(_why(base, why)))
        files = {}
        faults: list[tuple[str, int | str]] = []
        for base in sorted(os.listdir(self.path)):
            match = DB_FILE.fullmatch(base)
            if match is not None:
                files[base] = (match.groups(), self._read(base, faults))
        for base, why in faults:
            guard.report_fault("exposition", ValueError(_why(base, why)))
        if faults:  # the count just made is in this process's own files: read them again
            for base in [b for b in files if files[b][0][1] == str(os.getpid())]:
                files[base] = (files[base][0], self._read(base, []))
        metrics: dict[str, Metric] = {}
        for (kind, ident), entries in files.values():
            typ = kind.split("_")[0]
            for _key, (metric_name, sample, labels, help_text), value, timestamp in entries:
                metric = metrics.get(metric_name)
                if metric is None:
                    metric = metrics[metric_name] = Metric(metric_name, help_text, typ)
                # label pairs and _multiprocess_mode: the form prometheus-client's own merge
                # hands to _accumulate_metrics, not Metric's typed API
                if typ == "gauge":
                    metric._multiprocess_mode = kind[len("gauge_"):]  # type: ignore[attr-defined]
                    metric.add_sample(sample, labels + (("pid", ident),), value, timestamp)  # type: ignore[arg-type]
                else:
                    metric.add_sample(sample, labels, value)  # type: ignore[arg-type]
        accumulate = getattr(MultiProcessCollector, "_accumulate_metrics", None)
        if accumulate is None:  # prometheus-client changed: whole files, the bad ones left out
            bad = {base for base, _why in faults}
            whole: Iterable[Metric] = MultiProcessCollector.merge(
                [os.path.join(self.path, b) for b, (_, e) in files.items() if e and b not in bad],
                accumulate=True)
            _group_series(whole)
            _add_missing_inf(whole)
            exemplars.attach(whole, found)
            return whole
        merged: Iterable[Metric] = accumulate(metrics, True)
        _group_series(merged)
        _add_missing_inf(merged)
        exemplars.attach(merged, found)
        return merged

    def _read(self, base: str, faults: list[tuple[str, int | str]]) -> list[Entry]:
        """The good entries of one file; a bad one is noted in ``faults`` (a bad merged one set aside)."""
        name = os.path.join(self.path, base)
        bad: int | str
        try:
            entries, bad = read_db(name, base.split("_", maxsplit=1)[0])
        except FileNotFoundError:
            return []  # a dead worker's file, merged meanwhile
        except (BadFile, OSError) as exc:
            entries, bad = [], str(exc)
        if bad:
            faults.append((base, bad))
            if base.endswith("_merged.db"):
                set_aside(name, entries)
        return entries


def _group_series(metrics: Iterable[Any]) -> None:
    """Each series' samples next to each other, in the order the series first appear: OpenMetrics
    requires it, and prometheus-client before 0.23 interleaves the series of a histogram. A stable
    sort: where they are grouped already (later versions), nothing moves."""
    for metric in metrics:
        first: dict[tuple[tuple[str, str], ...], int] = {}

        def series(sample: Any, first: dict[tuple[tuple[str, str], ...], int] = first) -> int:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("le", "quantile")))
            return first.setdefault(key, len(first))

        metric.samples = sorted(metric.samples, key=series)


def _add_missing_inf(metrics: Iterable[Any]) -> None:
    """Give a histogram series caught without its ``+Inf`` bucket (a scrape racing the series'
    creation, which writes ``+Inf`` last, or a worker killed inside it) that bucket: it holds
    the count. Without it an OpenMetrics parser refuses the whole scrape."""
    from prometheus_client.samples import Sample  # noqa: PLC0415 (lazily: see the module docstring)
    for metric in metrics:
        if metric.type != "histogram":
            continue
        bucket, count = metric.name + "_bucket", metric.name + "_count"
        complete = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                    for s in metric.samples if s.name == bucket and s.labels.get("le") == "+Inf"}
        samples: list[Any] = []
        for s in metric.samples:  # +Inf just before its count, where prometheus-client puts it
            if s.name == count and tuple(sorted(s.labels.items())) not in complete:
                samples.append(Sample(bucket, {**s.labels, "le": "+Inf"}, s.value))
            samples.append(s)
        metric.samples = samples


def _why(base: str, bad: int | str) -> str:
    return f"{base}: {bad} bad entries left out" if isinstance(bad, int) else f"{base}: {bad}"


# -- dead workers: merged by the master ------------------------------------------------------

_kept: dict[str, dict[str, list[tuple[str, float, float]]]] = {}  # dir -> merged file -> entries
_pending: dict[str, set[int]] = {}  # dir -> dead pids whose files could not be merged yet
_restore_failed: set[str] = set()


def merge_dead_worker(pid: int, path: str | None = None) -> int:
    """Fold a dead worker's counters, histograms and summaries into ``<type>_merged.db``.

    Returns the files removed. Runs under the directory's exclusive lock (scrapes take
    it shared, so a scrape never sees a value twice or not at all). Never raises: a merge
    that cannot be written (disk full) keeps the worker's files, which scrapes still
    read, and is tried again at the next worker exit.
    """
    path = path or multiprocess_dir()
    if not path:
        return 0
    pids = [pid] + sorted(_pending.pop(path, set()) - {pid})
    removed = 0
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        with directory_lock(path, exclusive=True):
            for dead in pids:
                removed += _merge_one(path, dead)
    except Exception as exc:  # never take the master down
        guard.report_fault("merge", exc)
    return removed


def _merge_one(path: str, pid: int) -> int:
    removed = 0
    try:
        merged, faults = exemplars.merge_dead(path, pid)
        removed += merged
        for base, why in faults:
            guard.report_fault("exemplars", ValueError(_why(base, why)))
    except OSError as exc:  # the dead worker's exemplars are lost, its counts are not
        removed += 1
        guard.report_fault("exemplars", exc)
    failed: OSError | None = None
    for base in sorted(os.listdir(path)):
        match = DB_FILE.fullmatch(base)
        if match is None or match.group(2) != str(pid):
            continue
        name = os.path.join(path, base)
        kind = match.group(1)
        if kind in MERGED_KINDS:
            bad: int | str
            try:
                entries, bad = read_db(name, kind)
            except FileNotFoundError:
                continue
            except (BadFile, OSError) as exc:  # its counts were never in a scrape either
                entries, bad = [], str(exc)
            if bad:
                guard.report_fault("merge", ValueError(_why(base, bad)))
            try:
                _add_to_merged(path, kind, entries)
            except OSError as exc:
                failed = exc
                continue  # keep the file: scrapes read it, and the merge is tried again
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)  # gauges of a dead worker carry nothing the live ones lack
        removed += 1
    if failed is not None:
        _pending.setdefault(path, set()).add(pid)
        guard.report_fault("merge", OSError(
            failed.errno, f"worker {pid}: cannot write merged metrics ({failed.strerror}); "
            f"its files are kept and still scraped, the merge is retried at the next worker exit"))
    return removed


def _add_to_merged(path: str, kind: str, entries: list[Entry]) -> None:
    if not entries:
        return
    base = f"{kind}_merged.db"
    name = os.path.join(path, base)
    total: dict[str, list[float]] = {}
    for key, value, timestamp in _merged_now(path, base, kind):
        total[key] = [value, timestamp]
    for key, _parsed_key, value, timestamp in entries:
        old = total.get(key)
        total[key] = [value if old is None else old[0] + value, timestamp]
    merged = [(key, v, ts) for key, (v, ts) in total.items()]
    write_db(name, merged)
    _kept.setdefault(path, {})[base] = merged


def _merged_now(path: str, base: str, kind: str) -> list[tuple[str, float, float]]:
    """The merged file's entries; what this master last wrote if the file is gone or bad."""
    kept = _kept.get(path, {}).get(base)
    name = os.path.join(path, base)
    bad: int | str
    try:
        entries, bad = read_db(name, kind)
    except FileNotFoundError:
        return kept or []
    except (BadFile, OSError) as exc:
        entries, bad = [], str(exc)
    if bad:
        guard.report_fault("merge", ValueError(_why(base, bad) + f"; set aside as {base}.bad"))
        set_aside(name, entries)
        if kept is not None:
            return kept
    return [(key, value, timestamp) for key, _p, value, timestamp in entries]


def keep_merged(path: str | None = None) -> int:
    """In the master: write again the merged files it made if they are gone (directory
    deleted, a bad one set aside), so merged counts never go backwards. Cheap: one stat
    per file when nothing is missing. Never raises."""
    path = path or multiprocess_dir()
    kept = _kept.get(path or "")
    if not path or not kept:
        return 0
    written = 0
    try:
        missing = [base for base in kept if not os.path.exists(os.path.join(path, base))]
        if not missing:
            return 0
        os.makedirs(path, mode=0o700, exist_ok=True)
        with directory_lock(path, exclusive=True):
            for base in missing:
                if not os.path.exists(os.path.join(path, base)):
                    offsets = write_db(os.path.join(path, base), kept[base])
                    if base == _master_counts.file_base:
                        _master_counts.offsets = offsets
                    written += 1
        _restore_failed.discard(path)
        log.warning("mlmonitor: wrote %s again in %s from the master's memory", ", ".join(missing), path)
    except Exception as exc:
        if path not in _restore_failed:  # one line, not one a second
            _restore_failed.add(path)
            guard.report_fault("merge", exc)
    return written


class _MasterCounts:
    """The master's own fault count, in a counter file it keeps (no metrics in the master).

    The file is written whole at start; a fault updates the value in place (a block that
    is already allocated), so it is counted even when the disk is full.
    """

    def __init__(self) -> None:
        self.file_base = ""
        self.offsets: dict[str, int] = {}

    def start(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.file_base = f"counter_master_{os.getpid()}.db"
        self.key = json.dumps([INTERNAL_ERRORS, INTERNAL_ERRORS_TOTAL, {COMPONENT: "merge"},
                               INTERNAL_ERRORS_HELP], sort_keys=True)
        self.count = 0.0
        self.offsets = write_db(os.path.join(path, self.file_base), [(self.key, 0.0, 0.0)])
        _kept.setdefault(path, {})[self.file_base] = [(self.key, 0.0, 0.0)]
        guard.add_owner(self)

    def count_fault(self, component: str) -> None:
        if component != "merge" or os.getpid() != self.pid:  # workers inherit the listener
            return
        self.count += 1
        _kept[self.path][self.file_base] = [(self.key, self.count, 0.0)]
        # no directory lock: a fault is reported while a merge holds it
        fd = os.open(os.path.join(self.path, self.file_base), os.O_WRONLY)
        try:
            os.pwrite(fd, struct.pack("dd", self.count, 0.0), self.offsets[self.key])
        finally:
            os.close(fd)


_master_counts = _MasterCounts()


def master_started() -> None:
    """In the gunicorn master: count its merge faults where scrapes see them.

    With ``--preload`` the app's metrics sink already counts faults in the master
    (its ``merge`` series is created at start, so counting needs no new block).
    """
    path = multiprocess_dir()
    if path and not guard.has_owners() and not _master_counts.file_base:
        try:
            _master_counts.start(path)
        except OSError as exc:
            guard.report_fault("merge", exc)


# -- label caps shared by every process -----------------------------------------------------

class AdmittedValues:
    """The values of one capped label admitted by any process on the directory.

    One append-only file per label (a JSON string a line), read and extended under an
    flock, so the first ``limit`` values are the same for every worker and every
    restart. Only consulted on a value this process has not seen, and no longer once
    the cap is known to be full. Exact, with two documented exceptions: a configured
    value (the app's own model version) is always admitted, and after the directory is
    deleted the file starts again from what the asking processes still know, so values
    known only to processes whose cap is already full can be admitted once more (at most
    the cap again).
    """

    def __init__(self, path: str, label: str) -> None:
        self.file = os.path.join(path, f"mlmonitor_labels_{label}.jsonl")

    def admit(self, value: str, known: set[str], limit: int, force: bool = False) -> tuple[set[str], bool]:
        """(every admitted value, whether ``value`` is one); raises OSError.

        Values this process knows but the file lacks (the directory was deleted) are
        written back first, so the file heals.
        """
        import fcntl  # noqa: PLC0415 (POSIX only: see the module docstring)
        try:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.file), mode=0o700, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = os.pread(fd, min(os.fstat(fd).st_size, 1 << 20), 0)
            shared = set()
            for line in data.splitlines():
                with contextlib.suppress(ValueError):
                    item = json.loads(line)
                    if isinstance(item, str):
                        shared.add(item)
            everything = shared | known
            admitted = value in everything or force or len(everything) < limit
            if admitted:
                everything.add(value)
            new = everything - shared
            if new:
                text = "".join(json.dumps(v) + "\n" for v in sorted(new))
                os.write(fd, (b"\n" if data and not data.endswith(b"\n") else b"") + text.encode())
            return everything, admitted
        finally:
            os.close(fd)
