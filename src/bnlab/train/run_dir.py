"""One run folder: the files every run keeps, and the one check that resumes it.

``bnlab train``, ``bnlab d2l`` (its folder and each ``runs/VARIANT/seedK``) and
``bnlab lab NAME`` keep their runs in this layout (a command writes the files it has;
d2l's per-seed folders keep their record in ``result.json`` beside ``fit``'s files)::

    RUN_DIR/
      config.json         what was run: the settings, written first
      environment.json    versions, machine, device, threads, git revision
      metrics.jsonl       one JSON record per epoch (and per logged step), appended
      checkpoint.pt       model, optimizer and RNG states after the last full epoch
      checkpoint.prev.pt  the checkpoint before it, so that a damaged one is not the end
      results.json        what came out, written last

Lab folders written before this layout keep their environment in ``env.json``
(``LEGACY_ENVIRONMENT_NAME``); the report reads both (``bnlab.report.readers._layout``
repeats these names, as the report does not import ``bnlab.train``).

Resuming: a folder is continued only by a run of the same settings. ``settings_changes``
compares two settings records (nested dicts, as ``config.json`` holds them) key by key
and lists what differs, leaving out the keys a caller lets change (``"train.epochs"``);
``RunDir.settings_changes`` compares a run's settings with the folder's ``config.json``,
and ``fit`` compares its config with the checkpoint's in the same way. An empty list
means "this folder holds a run of the same settings"; anything else is refused by the
caller, with its own words for the fix.

Ownership: bnlab writes only into a folder that is missing, empty, or marked as one
of its runs by the file ``.bnlab-run`` (``MARKER_NAME``). Every write of a ``RunDir``
claims the folder first (``RunDir.claim``): a folder holding anything else is refused
with ``ForeignFolderError`` (nothing is written or removed), and the marker is created.
The marker is also the folder's lock: the claiming process holds an exclusive
``flock`` on it for its lifetime (the kernel drops it when the process ends, crash
included), and writes into it its pid, command and start time; a second process that
claims the folder gets ``RunDirBusyError`` naming that holder. ``RunDir.claimed()``
holds the claim for a ``with`` block only (``fit`` does, for its ``run_dir``).

All whole-file writes are atomic (``bnlab.train.io``); the metrics log grows by
appended, fsynced lines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere folders are marked but not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from bnlab.train.io import (
    append_jsonl,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
    write_jsonl,
)

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "ENVIRONMENT_NAME",
    "LEGACY_ENVIRONMENT_NAME",
    "MARKER_NAME",
    "METRICS_NAME",
    "PREVIOUS_CHECKPOINT_NAME",
    "RESULTS_NAME",
    "RUN_FILES",
    "Change",
    "ForeignFolderError",
    "RunDir",
    "RunDirBusyError",
    "settings_changes",
]

#: File names inside a run folder.
CONFIG_NAME = "config.json"
ENVIRONMENT_NAME = "environment.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
RESULTS_NAME = "results.json"
#: Where lab folders written before this layout keep their environment.
LEGACY_ENVIRONMENT_NAME = "env.json"
#: The marker of a folder bnlab owns, and its lock (see the module docstring).
MARKER_NAME = ".bnlab-run"
#: Every file of the layout, in the order a run writes them.
RUN_FILES: tuple[str, ...] = (
    CONFIG_NAME,
    ENVIRONMENT_NAME,
    METRICS_NAME,
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    RESULTS_NAME,
)


@dataclass(frozen=True)
class Change:
    """One setting that differs between a saved run and this one.

    Attributes:
        key: the setting, dotted for nested ones (``"train.lr"``).
        saved: its value in the saved run (None when it had none).
        current: its value now (None when it has none).
    """

    key: str
    saved: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.saved!r} -> {self.current!r}"


def _merged(defaults: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` over ``defaults``, nested dicts merged key by key."""
    merged = dict(defaults)
    for key, value in saved.items():
        base = merged.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = _merged(base, value)
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    """Tuples as lists, as they come back from JSON."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _allowed(key: str, may_change: Collection[str]) -> bool:
    """Whether ``key`` or a section above it (``"distributed"`` for ``"distributed.x"``) may change."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in may_change for n in range(1, len(parts) + 1))


def _changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str, may_change: Collection[str]
) -> list[Change]:
    # The current record's order first, then keys only the saved one has; a section
    # (a dict) is compared key by key, sorted, against the other side's (or nothing).
    keys = [*current, *(k for k in saved if k not in current)]
    if prefix:
        keys = sorted(keys)
    found: list[Change] = []
    for key in keys:
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) or isinstance(new, Mapping):
            old = old if isinstance(old, Mapping) else {}
            new = new if isinstance(new, Mapping) else {}
            found += _changes(old, new, f"{name}.", may_change)
        elif _plain(old) != _plain(new) and not _allowed(name, may_change):
            found.append(Change(name, old, new))
    return found


def settings_changes(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    may_change: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> list[Change]:
    """What differs between the settings of a saved run and those of this one.

    Args:
        saved: the saved run's settings (a ``config.json``, or a checkpoint's config).
        current: this run's settings, in the same shape.
        may_change: dotted keys that may differ (``"train.epochs"``); a section name
            (``"distributed"``) lets every key under it change.
        defaults: values the saved run counts as having where it has none (settings
            added since it was saved), in the same shape.

    Returns:
        The changes: top-level keys in ``current``'s order (then those only ``saved``
        has), keys inside a section sorted. Empty when the runs have the same settings.
    """
    return _changes(_merged(defaults or {}, saved), current, "", may_change)


class ForeignFolderError(FileExistsError):
    """The folder holds files and is not marked as a bnlab run: bnlab writes nothing there."""


class RunDirBusyError(RuntimeError):
    """Another process holds the folder's lock.

    Attributes:
        holder: what the holder wrote into the marker (``pid``, ``command``,
            ``started``), empty when it could not be read.
    """

    def __init__(self, message: str, holder: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.holder = dict(holder)


# Folders this process has claimed: real path -> the open, locked marker's descriptor.
_HELD: dict[str, int] = {}


def _this_process() -> dict[str, Any]:
    """Who holds a lock: pid, the command line (for the message another process shows)
    and when the claim began."""
    argv = list(sys.argv) or ["python"]
    program = os.path.basename(argv[0])
    if program == "__main__.py":
        program = "python -m bnlab"
    return {
        "pid": os.getpid(),
        "command": " ".join([program, *argv[1:]]),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _read_holder(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        value = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        if isinstance(value, dict):
            return value
    return {}


def _busy(path: Path, holder: Mapping[str, Any]) -> RunDirBusyError:
    if holder:
        who = (
            f"pid {holder.get('pid', '?')}, {str(holder.get('command', '?'))!r}, "
            f"started {holder.get('started', '?')}"
        )
    else:
        who = "a process that has not said who it is yet"
    return RunDirBusyError(
        f"{path} is in use by another bnlab process ({who}); wait for it to finish, or "
        "choose another folder",
        holder,
    )


class _LayoutFile:
    """A read-only attribute of a ``RunDir``: the path of one file of the layout in it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute

    def __get__(self, run: RunDir | None, owner: type | None = None) -> Any:
        return self if run is None else run.path / self.name

    def __set__(self, run: RunDir, value: Any) -> None:
        raise AttributeError(f"property {self.attribute!r} of 'RunDir' object has no setter")


class RunDir:
    """A run folder: where each file of the layout is, and how it is read and written.

    Nothing is created until something is written (``ensure``, the ``write_*``
    methods and ``start_metrics`` create the folder). Every method that writes or
    removes a file claims the folder first (``claim``).

    Args:
        path: the folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # The files of the layout: ``run.config`` is ``run.path / CONFIG_NAME``, and so on.
    config = _LayoutFile(CONFIG_NAME)
    environment = _LayoutFile(ENVIRONMENT_NAME)
    metrics = _LayoutFile(METRICS_NAME)
    checkpoint = _LayoutFile(CHECKPOINT_NAME)
    previous_checkpoint = _LayoutFile(PREVIOUS_CHECKPOINT_NAME)
    results = _LayoutFile(RESULTS_NAME)
    marker = _LayoutFile(MARKER_NAME)

    def ensure(self) -> RunDir:
        """Create the folder (and its parents) if missing; returns ``self``."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def existing(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that exist in the folder, in the order given."""
        return [name for name in names if (self.path / name).exists()]

    def is_empty(self) -> bool:
        """Whether the folder is missing or holds nothing (its marker aside)."""
        if not self.path.exists():
            return True
        return all(entry.name == MARKER_NAME for entry in self.path.iterdir())

    def is_marked(self) -> bool:
        """Whether the folder carries bnlab's marker (it holds, or held, a bnlab run)."""
        return self.marker.is_file()

    def _check_ours(self) -> None:
        """Refuse a folder bnlab must not write into (see ``claim``)."""
        if self.path.exists() and not self.path.is_dir():
            raise ForeignFolderError(
                f"{self.path} exists and is not a folder; choose a new or empty folder"
            )
        if self.is_empty() or self.is_marked():
            return
        names = sorted(entry.name for entry in self.path.iterdir())
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise ForeignFolderError(
            f"{self.path} is not empty and not a bnlab run folder (it holds {shown}; no "
            f"{MARKER_NAME}), so bnlab writes nothing there; choose a new or empty folder "
            f"(a run folder of an earlier bnlab: create an empty {MARKER_NAME} in it)"
        )

    def claim(self) -> RunDir:
        """Make the folder this process's run folder, for the rest of the process.

        The folder must be missing, empty or marked as a bnlab run; it is created, its
        marker written, and the marker locked (held until ``release`` or the end of
        the process). Claiming a folder this process holds already does nothing.

        Returns:
            ``self``.

        Raises:
            ForeignFolderError: the folder holds files and no marker (nothing is written),
                or the path is a file.
            RunDirBusyError: another process holds the folder (the message names it).
        """
        key = os.path.realpath(self.path)
        fd = _HELD.get(key)
        if fd is not None:
            if self.marker.is_file():
                return self
            # The folder was removed and made again since: claim the new one.
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.close(fd)
        self._check_ours()
        self.ensure()
        fd = os.open(self.marker, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    raise _busy(self.path, _read_holder(fd)) from None
            record = (json.dumps(_this_process()) + "\n").encode("utf-8")
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except BaseException:
            os.close(fd)
            raise
        _HELD[key] = fd
        return self

    def is_claimed(self) -> bool:
        """Whether this process holds the folder (``claim``)."""
        return os.path.realpath(self.path) in _HELD

    def release(self) -> None:
        """Give up this process's claim (the marker stays: the folder remains bnlab's)."""
        fd = _HELD.pop(os.path.realpath(self.path), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    @contextlib.contextmanager
    def claimed(self) -> Iterator[RunDir]:
        """``claim`` for a ``with`` block: released at its end unless held before."""
        held = self.is_claimed()
        self.claim()
        try:
            yield self
        finally:
            if not held:
                self.release()

    def remove(self, names: Iterable[str] = RUN_FILES) -> None:
        """Remove the files ``names`` (the layout's by default) where present; nothing else.

        Raises:
            ForeignFolderError, RunDirBusyError: see ``claim`` (nothing is removed).
        """
        if not self.path.exists():
            return
        self.claim()
        for name in names:
            (self.path / name).unlink(missing_ok=True)

    # config.json, environment.json, results.json

    def write_config(self, record: Mapping[str, Any]) -> Path:
        """Write ``config.json`` (atomically), creating the folder."""
        return write_json(self.claim().config, dict(record))

    def read_config(self) -> dict[str, Any]:
        """The settings in ``config.json``.

        Raises:
            OSError: the file is missing or unreadable.
            ValueError: it is not a JSON object.
        """
        value = json.loads(self.config.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {type(value).__name__}")
        return value

    def settings_changes(
        self,
        current: Mapping[str, Any],
        *,
        may_change: Collection[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> list[Change]:
        """``settings_changes`` between the folder's ``config.json`` and ``current``.

        Raises:
            OSError, ValueError: ``config.json`` is missing or unreadable (see
                ``read_config``).
        """
        return settings_changes(
            self.read_config(), current, may_change=may_change, defaults=defaults
        )

    def write_environment(self, record: Mapping[str, Any]) -> Path:
        """Write ``environment.json`` (atomically), creating the folder."""
        return write_json(self.claim().environment, dict(record))

    def write_results(self, record: Mapping[str, Any]) -> Path:
        """Write ``results.json`` (atomically), creating the folder."""
        return write_json(self.claim().results, dict(record))

    # metrics.jsonl and the checkpoints

    def start_metrics(self) -> None:
        """Begin a fresh run: an empty metrics log, no previous checkpoint, no leftovers.

        A previous checkpoint without a checkpoint belongs to an earlier run (one removed
        by ``--overwrite``): it must never become this run's fallback.
        """
        self.claim()
        self.previous_checkpoint.unlink(missing_ok=True)
        remove_stale_temporaries(self.path)  # of a process killed mid-write
        write_jsonl(self.metrics, [])

    def rewrite_metrics(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replace the metrics log with ``records`` (a resumed run drops what followed its
        checkpoint, so that no epoch is logged twice)."""
        write_jsonl(self.claim().metrics, records)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one record to the metrics log (flushed and fsynced)."""
        append_jsonl(self.claim().metrics, record)

    def save_checkpoint(self, state: Mapping[str, Any]) -> Path:
        """Replace ``checkpoint.pt`` atomically, keeping the one before as the previous."""
        self.claim()
        return save_checkpoint(self.checkpoint, state, keep_previous=self.previous_checkpoint)

    def load_checkpoint(self, *, previous: bool = False) -> dict[str, Any]:
        """Read ``checkpoint.pt`` (or, with ``previous``, ``checkpoint.prev.pt``).

        Raises:
            FileNotFoundError: no such checkpoint.
            RuntimeError: the file is not a readable checkpoint.
        """
        return load_checkpoint(self.previous_checkpoint if previous else self.checkpoint)

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove the temporary files of a process killed mid-write (see ``bnlab.train.io``)."""
        self.claim()
        return remove_stale_temporaries(self.path)
