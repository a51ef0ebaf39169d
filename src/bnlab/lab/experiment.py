"""The lab's experiment runner: one convention for every ``bnlab lab NAME``.

An experiment is a :class:`LabSpec`: a name, a claim it tests, a config dataclass (its
defaults are the full run; ``quick()`` gives a run small enough for the tests) and a
``run(config, ctx) -> LabOutcome`` function. :func:`run_lab` gives every experiment the
same results folder (a ``bnlab.train.run_dir.RunDir``)::

    RUN_DIR/
      config.json        {"experiment", "config", "command"}, written first
      environment.json   versions, machine, device, git revision (from the caller)
      units/KEY.json     one finished unit of work (a seed, a setting), for resuming
      results.json       written last: tables, verdicts, figures, raw per-seed numbers
      *.png              figures named in results.json

``results.json`` is what the report reads::

    {"experiment": "ics", "title": ..., "summary": ..., "command": "bnlab lab ics ...",
     "quick": false, "config": {...}, "elapsed_s": 12.3,
     "tables": [{"title": ..., "columns": [...], "rows": [[...], ...]}],
     "verdicts": [{"claim": ..., "holds": true | false | null, "measured": "..."}],
     "figures": [{"file": "x.png", "caption": ...}],
     "notes": [...], "raw": {...}}

Work is resumable by units: ``ctx.unit(key, compute)`` returns the stored JSON of a
finished unit, or runs ``compute()`` and stores its result atomically, so a run that was
killed starts again at the first unfinished unit and ends with the numbers of an
uninterrupted one (each unit seeds itself; see ``seeded``).

Statistics: :func:`describe` (mean, sample standard deviation, range over seeds) and
:func:`compare` (Welch's difference of means with its standard error; a difference
counts when it exceeds twice its standard error) turn per-seed numbers into verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from bnlab.train.io import write_json
from bnlab.train.run_dir import RunDir

__all__ = [
    "Comparison",
    "Figure",
    "LabContext",
    "LabOutcome",
    "LabSpec",
    "Progress",
    "Table",
    "Verdict",
    "available_labs",
    "compare",
    "config_from",
    "describe",
    "get_lab",
    "mean_std_text",
    "register_lab",
    "run_lab",
    "seeded",
]


@dataclass(frozen=True)
class Verdict:
    """A claim, whether the numbers support it (None: they do not decide), and the numbers."""

    claim: str
    holds: bool | None
    measured: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Table:
    """A summary table: column names and rows of printable values (str, int, float, None)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.title!r}: a row has {len(row)} values for "
                    f"{len(self.columns)} columns: {list(row)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
        }


@dataclass(frozen=True)
class Figure:
    """A figure file in the results folder (a name, not a path) and what it shows."""

    file: str
    caption: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LabOutcome:
    """What an experiment's ``run`` returns; ``run_lab`` adds the rest of results.json."""

    tables: list[Table]
    verdicts: list[Verdict]
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Progress(Protocol):
    """Where an experiment reports progress (the CLI draws a bar; tests pass nothing)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, steps: int = 1) -> None: ...


class _NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass


@dataclass(frozen=True)
class LabSpec:
    """One experiment of ``bnlab lab``.

    Args:
        name: the command-line name (``bnlab lab NAME``), lower case.
        title: a short title for tables and the report.
        summary: a paragraph: the claim tested and how (``--help`` and the report show it).
        config_type: a frozen dataclass; its defaults are the full run, and it has a
            ``quick()`` classmethod returning the small configuration.
        run: ``run(config, ctx) -> LabOutcome``.
        needs_data: whether ``ctx.data`` must hold Fashion-MNIST.
        full_time: the measured time of the full run (for ``--help`` and the README).
    """

    name: str
    title: str
    summary: str
    config_type: type
    run: Callable[[Any, LabContext], LabOutcome]
    needs_data: bool = True
    full_time: str = ""


_LABS: dict[str, LabSpec] = {}


def register_lab(spec: LabSpec, *, overwrite: bool = False) -> LabSpec:
    """Make ``spec`` available as ``bnlab lab spec.name``.

    Raises:
        ValueError: bad name, a config type that is not a dataclass with ``quick()``, or
            a name already registered (and ``overwrite`` False).
    """
    if not spec.name or spec.name != spec.name.lower():
        raise ValueError(f"lab name must be a non-empty lower-case string, got {spec.name!r}")
    if not dataclasses.is_dataclass(spec.config_type) or not callable(
        getattr(spec.config_type, "quick", None)
    ):
        raise ValueError(
            f"lab {spec.name!r}: config_type must be a dataclass with a quick() classmethod"
        )
    if spec.name in _LABS and not overwrite:
        raise ValueError(f"lab {spec.name!r} is already registered")
    _LABS[spec.name] = spec
    return spec


def available_labs() -> tuple[str, ...]:
    """Registered experiment names, in registration order."""
    return tuple(_LABS)


def get_lab(name: str) -> LabSpec:
    """The experiment ``name``.

    Raises:
        ValueError: unknown name, with the choices.
    """
    if name not in _LABS:
        raise ValueError(f"unknown lab experiment {name!r}; choose one of: {', '.join(_LABS)}")
    return _LABS[name]


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    """``text`` as a value of the field type ``annotation`` (int, float, bool, str, tuples)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if text.lower() == "none" and len(options) < len(args):
            return None
        return _parse_value(text, options[0], key)
    if origin is tuple:
        inner = args[0] if args else str
        return tuple(
            _parse_value(part.strip(), inner, key) for part in text.split(",") if part.strip()
        )
    if origin is Literal:
        if text not in args:
            raise ValueError(f"--set {key}={text}: choose one of {', '.join(map(str, args))}")
        return text
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text}: expected true or false")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: expected {annotation.__name__}") from None
    raise ValueError(f"--set {key}: the field's type {annotation!r} cannot be set from text")


def config_from(spec: LabSpec, *, quick: bool, overrides: Mapping[str, str] | None = None) -> Any:
    """The experiment's config: full or quick, with ``KEY=VALUE`` overrides applied.

    Raises:
        ValueError: an unknown key (the message lists the fields) or a bad value.
    """
    config = spec.config_type.quick() if quick else spec.config_type()
    if not overrides:
        return config
    hints = typing.get_type_hints(spec.config_type)
    names = [f.name for f in dataclasses.fields(config)]
    changes: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in names:
            raise ValueError(
                f"lab {spec.name}: unknown setting {key!r}; settings: {', '.join(names)}"
            )
        changes[key] = _parse_value(text, hints[key], key)
    return dataclasses.replace(config, **changes)


def _config_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class LabContext:
    """What an experiment's ``run`` gets besides its config.

    Attributes:
        out_dir: the results folder (figures go here, by file name).
        data: Fashion-MNIST as ``{"train_images", "train_labels", "test_images",
            "test_labels"}`` (uint8 images ``(N, 28, 28)``, int64 labels), or None.
        device: where to compute.
        progress: the progress reporter (``start``/``advance``).
        workers: processes that grid cells may run in at once (``bnlab.lab.runner``).
        threads: torch threads of each such process (None: 1).
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        data: Mapping[str, torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
        workers: int = 1,
        threads: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.data = data
        self.device = torch.device(device)
        self.progress: Progress = progress or _NoProgress()
        self.workers = workers
        self.threads = threads
        self.units_dir = self.out_dir / "units"
        self.units_reused = 0

    def unit(self, key: str, compute: Callable[[], Any], *, progress_steps: int = 0) -> Any:
        """The result of the unit of work ``key``, computed once and stored.

        Args:
            key: a file-name-safe key unique in the experiment (``"bn-seed0"``).
            compute: returns a JSON-ready value; called only if no stored result exists.
            progress_steps: how far ``compute`` advances the progress bar; a stored
                result advances it by as much, so a resumed run's bar ends full.
        """
        if not key or any(c in key for c in "/\\\0") or key.startswith("."):
            raise ValueError(f"unit key must be a plain file name, got {key!r}")
        path = self.units_dir / f"{key}.json"
        if path.exists():
            try:
                value = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RuntimeError(
                    f"{path} is unreadable ({exc}); delete it to recompute that unit"
                ) from exc
            self.units_reused += 1
            if progress_steps:
                self.progress.advance(progress_steps)
            return value["value"]
        value = compute()
        self.units_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "value": value})
        return value


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Seed torch's global CPU generator for a unit of work and restore it afterwards.

    Yields a CPU generator seeded with ``seed`` too, for code that takes one.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.random.set_rng_state(state)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value), min, max, n of finite values.

    Non-finite values (a diverged run) are counted in ``n_nonfinite`` and left out.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n_bad = len(values) - len(finite)
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "n_nonfinite": n_bad}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
        "n_nonfinite": n_bad,
    }


def mean_std_text(values: Sequence[float], *, missing: str = "n/a") -> str:
    """``describe(values)`` as table text: ``"mean ± std"`` (4 and 3 significant
    digits), the mean alone for one value, ``missing`` without a finite value."""
    stats = describe(values)
    if stats["mean"] is None:
        return missing
    std = "" if stats["std"] is None else f" ± {stats['std']:.3g}"
    return f"{stats['mean']:.4g}{std}"


@dataclass(frozen=True)
class Comparison:
    """``mean(a) - mean(b)`` with Welch's standard error and what it says.

    ``direction`` is ``"greater"`` or ``"less"`` when the difference exceeds twice its
    standard error (about a 95% interval that excludes 0), else ``"unclear"``; with
    fewer than two values on a side the standard error is unknown and only a
    difference larger than a positive ``min_effect`` counts.
    """

    diff: float
    se: float | None
    direction: Literal["greater", "less", "unclear"]

    def text(self, digits: int = 3) -> str:
        se = "n/a" if self.se is None else f"{self.se:.{digits}f}"
        return f"difference {self.diff:+.{digits}f} (standard error {se})"


def compare(a: Sequence[float], b: Sequence[float], *, min_effect: float = 0.0) -> Comparison:
    """Compare two groups of per-seed numbers (Welch's standard error, 2-sigma rule).

    Args:
        a, b: per-seed values; non-finite values are left out.
        min_effect: a difference must also exceed this in size to count.

    Raises:
        ValueError: a group without a finite value.
    """
    fa = [float(v) for v in a if v is not None and math.isfinite(v)]
    fb = [float(v) for v in b if v is not None and math.isfinite(v)]
    if not fa or not fb:
        raise ValueError(
            f"compare: each group needs a finite value, got {list(a)!r} and {list(b)!r}"
        )
    diff = statistics.fmean(fa) - statistics.fmean(fb)
    se: float | None = None
    if len(fa) > 1 and len(fb) > 1:
        se = math.sqrt(statistics.variance(fa) / len(fa) + statistics.variance(fb) / len(fb))
    if se is not None:
        decided = abs(diff) > max(min_effect, 2 * se)
    else:  # one seed a side: no spread known, only a stated minimum effect can decide
        decided = min_effect > 0 and abs(diff) > min_effect
    if decided:
        direction: Literal["greater", "less", "unclear"] = "greater" if diff > 0 else "less"
    else:
        direction = "unclear"
    return Comparison(diff, se, direction)


def run_lab(
    spec: LabSpec,
    config: Any,
    out_dir: Path,
    *,
    data: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    resume: bool = False,
    command: str = "",
    environment: Mapping[str, Any] | None = None,
    quick: bool = False,
    workers: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run one experiment into ``out_dir`` and return what it wrote to results.json.

    Args:
        spec: the experiment.
        config: an instance of ``spec.config_type``.
        out_dir: the results folder; it must be empty or absent unless ``resume``.
        data: Fashion-MNIST splits (see ``LabContext``); required if ``spec.needs_data``.
        device: where to compute.
        progress: progress reporter.
        resume: continue a run in ``out_dir`` with the same config (finished units are
            reused).
        command: the command line that reproduces the run (saved in the results).
        environment: saved as environment.json.
        quick: whether ``config`` is the quick one (recorded).
        workers, threads: grid cells in that many processes of that many threads (see
            ``LabContext``).

    Raises:
        ValueError: wrong config type, missing data, a non-empty ``out_dir`` without
            ``resume``, or a resume with another config (the message names the fix).
    """
    if not isinstance(config, spec.config_type):
        raise ValueError(
            f"lab {spec.name}: config must be a {spec.config_type.__name__}, got {type(config).__name__}"
        )
    if spec.needs_data and data is None:
        raise ValueError(f"lab {spec.name} needs Fashion-MNIST: pass data (the CLI's --data-dir)")
    out_dir = Path(out_dir)
    config_record = {
        "experiment": spec.name,
        "quick": quick,
        "config": _config_dict(config),
        "command": command,
    }
    run = RunDir(out_dir)
    if not run.is_empty():
        if not resume:
            raise ValueError(
                f"{out_dir} is not empty; pass --resume to continue the run there, "
                "or choose another --out"
            )
        # The same experiment and config; how it was typed (quick, command) may differ.
        changes = (
            run.settings_changes(config_record, may_change={"quick", "command"})
            if run.config.exists()
            else []
        )
        if changes:
            raise ValueError(
                f"{run.config} holds another experiment or config "
                f"({'; '.join(str(c) for c in changes)}); resume with the same settings, or "
                "choose another --out"
            )
    run.write_config(config_record)
    if environment is not None:
        run.write_environment(environment)
    ctx = LabContext(
        out_dir, data=data, device=device, progress=progress, workers=workers, threads=threads
    )
    started = time.perf_counter()
    outcome = spec.run(config, ctx)
    elapsed = time.perf_counter() - started
    for figure in outcome.figures:
        if not (out_dir / figure.file).is_file():
            raise RuntimeError(
                f"lab {spec.name}: figure {figure.file} was not written to {out_dir}"
            )
    results = {
        "experiment": spec.name,
        "title": spec.title,
        "summary": spec.summary,
        "command": command,
        "quick": quick,
        "config": config_record["config"],
        "elapsed_s": elapsed,
        "units_reused": ctx.units_reused,
        "tables": [t.to_dict() for t in outcome.tables],
        "verdicts": [v.to_dict() for v in outcome.verdicts],
        "figures": [f.to_dict() for f in outcome.figures],
        "notes": list(outcome.notes),
        "raw": outcome.raw,
    }
    run.write_results(results)
    return results
