"""``bnlab lab NAME``: run one experiment of the lab into a results folder.

Each experiment is a subcommand with its own ``--help`` (the claim, the method, the
settings with their full and quick values). Common options: ``--quick`` (the small
configuration the tests use), ``--seeds N``, ``--set KEY=VALUE`` for any setting,
``--out RUN_DIR``, ``--resume``, ``--data-dir``, ``--device``, ``--threads``.

``bnlab lab claims RUN_DIR... --out DIR`` gathers finished runs into the claims table
(``DIR/claims.json`` and a printed table): each claim of the seeds, its experiment, the
numbers, the rule and the verdict computed by the rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

import bnlab.lab  # noqa: F401  (registers every experiment)
from bnlab.cli._args import add_command, add_workers_argument, positive_int
from bnlab.cli._cores import pick
from bnlab.cli._print import budget_too_small, verdict_lines
from bnlab.cli._run_files import run_environment
from bnlab.cli.data import add_data_dir_argument, load_splits
from bnlab.lab.claims import (
    NOT_MEASURED,
    evaluate_claims,
    load_many,
    write_claims,
    write_claims_markdown,
)
from bnlab.lab.experiment import LabSpec, available_labs, config_from, get_lab, run_lab

__all__ = ["add_parser", "run", "run_claims"]

HELP = "run an experiment that measures a claim about BN"
DESCRIPTION = (
    "Run one experiment of the lab. Each writes config.json, environment.json, "
    "results.json (tables, verdicts, per-seed numbers) and its figures into --out, "
    "prints a summary table and the verdicts, and resumes with --resume."
)
CLAIMS_HELP = "the claims table: every claim of the seeds and its verdict from finished runs"
CLAIMS_DESCRIPTION = (
    "Read the results.json of finished 'bnlab lab' runs and decide every registered "
    "claim with its stated rule: supported, not supported or mixed; a claim whose "
    "experiment is not among the folders is 'not measured'. Writes DIR/claims.json "
    "(a list of {claim, source, experiment, evidence, rule, verdict}) and prints "
    "the table. A folder that is not a lab results folder is named and skipped."
)


def _settings_help(spec: LabSpec) -> str:
    full, quick = spec.config_type(), spec.config_type.quick()
    lines = ["settings (--set KEY=VALUE; full value, quick value):"]
    for f in dataclasses.fields(full):
        a, b = getattr(full, f.name), getattr(quick, f.name)
        lines.append(f"  {f.name} = {a!r}" + ("" if a == b else f"   (quick: {b!r})"))
    if spec.full_time:
        lines.append(f"full run: {spec.full_time}")
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_parser(subparsers: Any) -> None:
    """Register ``bnlab lab`` and one sub-subcommand per experiment."""
    p = add_command(subparsers, "lab", run, HELP, DESCRIPTION)
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.set_defaults(lab=None)
    labs = p.add_subparsers(dest="lab", metavar="EXPERIMENT")
    for name in available_labs():
        spec = get_lab(name)
        epilog = _settings_help(spec)
        q = add_command(labs, name, run, spec.title, spec.summary, epilog, as_written=True)
        q.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="results folder")
        q.add_argument(
            "--quick", action="store_true", help="the small configuration (seconds to a minute)"
        )
        q.add_argument(
            "--seeds",
            type=positive_int,
            default=None,
            help="number of seeds (overrides the setting)",
        )
        q.add_argument(
            "--set",
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="change a setting (repeatable); see the list below",
        )
        q.add_argument("--resume", action="store_true", help="continue the run in --out")
        if spec.needs_data:
            add_data_dir_argument(q)
        q.add_argument(
            "--device",
            choices=("cpu", "cuda"),
            default="cpu",
            help="where to compute (default cpu)",
        )
        q.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="torch CPU threads (default: from the free cores)",
        )
        add_workers_argument(q, "computing grid cells", "except with --quick")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = add_command(labs, "claims", run_claims, CLAIMS_HELP, CLAIMS_DESCRIPTION)
    c.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="results folders")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="where claims.json goes")
    c.add_argument(
        "--markdown",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the table as Markdown (claim, experiment, the difference with its "
        "95%% interval, verdict, literature), e.g. for a README",
    )


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, total: int, description: str) -> None:
        if self._task is None:
            self._task = self._progress.add_task(description, total=total)
        else:
            self._progress.reset(self._task, total=total, description=description)

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, steps)


def _load_data(args: argparse.Namespace, console: Console) -> dict[str, torch.Tensor]:
    splits = load_splits(args)
    console.print(splits.describe())
    return splits.tensors


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_tables(results: dict[str, Any]) -> list[Table]:
    """The experiment's tables; cells wrap (never cut) to fit the console's width."""
    tables = []
    for table in results["tables"]:
        t = Table(title=table["title"])
        for column in table["columns"]:
            t.add_column(str(column), overflow="fold")
        for row in table["rows"]:
            t.add_row(*(_cell(v) for v in row))
        tables.append(t)
    return tables


def _print_results(console: Console, results: dict[str, Any]) -> None:
    for table in results_tables(results):
        console.print(table)
    seeds = (results.get("config") or {}).get("seeds")
    too_small = budget_too_small(
        seeds=seeds if isinstance(seeds, int) else None, quick=bool(results.get("quick"))
    )
    for line in verdict_lines(results["verdicts"], too_small):
        console.print(line)
    for note in results["notes"]:
        console.print(f"note: {note}")


def _command(args: argparse.Namespace, overrides: dict[str, str]) -> str:
    """The command line that reproduces this run (from the parsed arguments)."""
    words = ["bnlab", "lab", args.lab, "--out", str(args.out)]
    if args.quick:
        words.append("--quick")
    for key, value in overrides.items():
        words += ["--set", f"{key}={value}"]
    if getattr(args, "data_dir", None):
        words += ["--data-dir", str(args.data_dir)]
    if args.device != "cpu":
        words += ["--device", args.device]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Run the experiment named on the command line; print its table and verdicts."""
    console = Console()
    if args.lab is None:
        for name in available_labs():
            spec = get_lab(name)
            console.print(f"{name:14} {spec.title}")
        if not args.list:
            console.print("run 'bnlab lab EXPERIMENT --help' for an experiment's settings")
        return 0
    spec = get_lab(args.lab)
    if args.device == "cuda" and not torch.cuda.is_available():
        args.parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    layout = pick(
        # The grid's size is the experiment's: the runner starts no more processes than
        # cells. Quick runs take seconds, less than starting a process.
        runs=1_000,
        parallel_pays=not args.quick and args.device == "cpu",
        threads=args.threads,
        workers=args.workers if args.device == "cpu" else 1,
    )
    console.print(layout.line())
    torch.set_num_threads(layout.threads)
    overrides = dict(args.set)
    if args.seeds is not None:
        overrides["seeds"] = str(args.seeds)
    try:
        config = config_from(spec, quick=args.quick, overrides=overrides)
    except ValueError as exc:
        args.parser.error(str(exc))
    data = _load_data(args, console) if spec.needs_data else None
    command = _command(args, overrides)
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
    ) as bar:
        results = run_lab(
            spec,
            config,
            args.out,
            data=data,
            device=args.device,
            progress=_RichProgress(bar),
            resume=args.resume,
            command=command,
            environment={**run_environment(args.device), "layout": layout.record()},
            quick=args.quick,
            workers=layout.workers,
            threads=layout.threads,
        )
    _print_results(console, results)
    elapsed = time.perf_counter() - started
    reused = f", {results['units_reused']} finished units reused" if results["units_reused"] else ""
    console.print(
        f"Results in {args.out} (results.json and {len(results['figures'])} figures); {elapsed:.0f} s{reused}."
    )
    return 0


_VERDICT_STYLE = {
    "supported": "green",
    "not supported": "red",
    "mixed": "yellow",
    NOT_MEASURED: "dim",
}


def _evidence_text(evidence: Any, prefix: str = "") -> list[str]:
    """``key=value`` lines of a nested evidence dict, numbers to 4 significant digits."""
    if isinstance(evidence, dict):
        lines: list[str] = []
        for key, value in evidence.items():
            lines += _evidence_text(value, f"{prefix}{key}.")
        return lines
    if isinstance(evidence, list) and any(isinstance(v, dict) for v in evidence):
        lines = []
        for i, value in enumerate(evidence):
            lines += _evidence_text(value, f"{prefix}{i}.")
        return lines
    if isinstance(evidence, list):
        text = "[" + ", ".join(_cell(v) for v in evidence) + "]"
    else:
        text = _cell(evidence)
    return [f"{prefix.rstrip('.')}={text}"]


def _literature_lines(row: dict[str, Any]) -> list[str]:
    """What the papers found and whether ours agrees (and why not), under the evidence."""
    found = row.get("literature")
    if not isinstance(found, dict):
        return []
    lines = [
        f"[dim]literature ({found.get('paper', '?')}): {found.get('finding')}; ours "
        f"{row.get('agreement', '?')}[/dim]"
    ]
    if row.get("why") and row.get("verdict") != NOT_MEASURED:
        lines.append(f"[dim]why: {row['why']}[/dim]")
    return lines


# The claims table's columns: 80 characters with the borders and padding (10).
_CLAIM_WIDTH, _VERDICT_WIDTH, _EVIDENCE_WIDTH = 24, 13, 33


def claims_table(table: list[dict[str, Any]]) -> Table:
    """The claims table: three columns (source and experiment under the claim), so that
    it fits 80 columns; long evidence values wrap, never cut."""
    t = Table(title="Claims of the seeds, decided by the numbers", show_lines=True)
    # Fixed widths: rich measures a column by its longest word (a file name, a long
    # key=value) and crops whole lines when those do not fit; fold breaks them instead.
    t.add_column("claim (source; experiment)", overflow="fold", width=_CLAIM_WIDTH)
    t.add_column("verdict", overflow="fold", width=_VERDICT_WIDTH)
    t.add_column("evidence", overflow="fold", width=_EVIDENCE_WIDTH)
    for row in table:
        style = _VERDICT_STYLE.get(row["verdict"], "")
        evidence = row["evidence"]
        lines = list(row.get("summary") or []) or _evidence_text(
            {k: v for k, v in evidence.items() if k != "quick"}
        )
        if evidence.get("quick"):
            lines.insert(0, "(quick run)")
        lines += _literature_lines(row)
        t.add_row(
            f"{row['claim']}\n[dim]({row['source']}; {row['experiment']})[/dim]",
            f"[{style}]{row['verdict']}[/{style}]" if style else row["verdict"],
            "\n".join(lines),
        )
    return t


def run_claims(args: argparse.Namespace) -> int:
    """Decide every registered claim from the given results folders; write and print."""
    console = Console()
    results, problems = load_many(args.run_dirs)
    for problem in problems:
        console.print(f"[yellow]skipped[/yellow]: {problem}", highlight=False)
    if not results:
        console.print(
            "no 'bnlab lab' results among the folders given; nothing to decide "
            "(run an experiment first, e.g. 'bnlab lab lr-sweep --out RUN_DIR')"
        )
        return 1
    table = evaluate_claims(results)
    path = write_claims(args.out, table)
    if args.markdown is not None:
        write_claims_markdown(args.markdown, table)
    console.print(claims_table(table))
    counts = {v: sum(r["verdict"] == v for r in table) for v in _VERDICT_STYLE}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    console.print(f"{len(table)} claims ({summary}); written to {path}", highlight=False)
    return 0
