"""What the commands print beside their tables: verdicts, and whether the budget decides.

A verdict is computed by its experiment's rule from the numbers of the run (a difference
counts when it exceeds twice its standard error over seeds). With one seed there is no
spread to compare against, and a few hundred images train a network for a few steps:
such a run still computes its verdicts (they are in its results files), but the console
says that the budget is too small to decide instead of "holds" or "does not hold".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "D2L_METRICS",
    "MIN_SEEDS",
    "MIN_TRAIN_IMAGES",
    "budget_too_small",
    "d2l_rows",
    "stats_cell",
    "verdict_lines",
]

#: Lab runs with fewer seeds than this decide nothing: the rule compares a difference
#: with its standard error over seeds.
MIN_SEEDS = 2
#: Runs on fewer training images than this decide nothing (a few hundred images are a
#: few steps of training): a sixth of Fashion-MNIST's training set.
MIN_TRAIN_IMAGES = 10_000


def budget_too_small(
    *, seeds: int | None = None, train_images: int | None = None, quick: bool = False
) -> str:
    """Why a run's verdicts do not decide anything, or ``""`` when they do.

    Too small: a lab ``--quick`` run (the tests' configuration), fewer than ``MIN_SEEDS``
    seeds (where the caller's rule needs a spread: the lab), or fewer than
    ``MIN_TRAIN_IMAGES`` training images (where the caller passes them: ``bnlab d2l``,
    whose one-seed default on the full training set is the chapter's own budget).
    """
    reasons = []
    if quick:
        reasons.append("a --quick run, the tests' configuration")
    if seeds is not None and seeds < MIN_SEEDS:
        reasons.append(f"{seeds} seed (the rules need >= {MIN_SEEDS})")
    if train_images is not None and train_images < MIN_TRAIN_IMAGES:
        reasons.append(f"{train_images:,} training images (fewer than {MIN_TRAIN_IMAGES:,})")
    return "; ".join(reasons)


_MARKS = {True: "[green]holds[/green]", False: "[red]does not hold[/red]"}


def verdict_lines(verdicts: Iterable[Mapping[str, Any]], too_small: str = "") -> list[str]:
    """One console line (rich markup) per verdict, ``- claim: mark (measured)``.

    With ``too_small`` (from ``budget_too_small``) a heading says so and every mark reads
    "budget too small to decide", the rule's outcome kept in brackets.
    """
    lines: list[str] = []
    if too_small:
        lines.append(
            f"[yellow]Verdicts: the budget is too small to decide ({too_small}); "
            "what the rules say on these numbers:[/yellow]"
        )
    for verdict in verdicts:
        mark = _MARKS.get(verdict["holds"], "[yellow]undecided[/yellow]")
        if too_small:
            mark = f"[yellow]budget too small to decide[/yellow] (rule: {mark})"
        lines.append(f"- {verdict['claim']}: {mark} ({verdict['measured']})")
    return lines


#: A d2l summary's per-variant metrics in the tables' column order, with their digits.
D2L_METRICS: tuple[tuple[str, int], ...] = (
    ("train_loss", 3),
    ("train_acc", 3),
    ("test_acc", 3),
    ("test_acc_recalibrated", 3),
    ("test_acc_batch_stats", 3),
    ("images_per_s", 0),
)


def stats_cell(stats: Mapping[str, Any], digits: int = 3, *, sep: str = " ± ") -> str:
    """``mean`` (and ``sep`` then ``std`` over more than one seed) of a summary's
    ``{"n", "mean", "std"}``; ``"-"`` when there is no value."""
    if stats.get("n", 0) == 0:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f"{sep}{stats['std']:.{digits}f}" if stats["n"] > 1 else "")


def d2l_rows(
    summary: Mapping[str, Any],
    cell: Callable[[Any, int], str],
    metrics: Sequence[tuple[str, int]] = D2L_METRICS,
) -> list[tuple[str, ...]]:
    """One row per variant of a d2l summary: its name, its lr and ``cell(stats, digits)``
    of each of ``metrics`` (the mean and std over seeds, as the summary holds them)."""
    return [
        (name, f"{entry['lr']:g}", *(cell(entry["metrics"][key], d) for key, d in metrics))
        for name, entry in summary["variants"].items()
    ]
