"""Fuzz tests: record how many cases ran per target and print the totals.

Each process writes ``bnlab-fuzz-counts-<worker>.json`` to ``$BNLAB_FUZZ_COUNTS_DIR``
(default ``$TMPDIR`` or /tmp); a run without xdist also prints the counts.
"""

from __future__ import annotations

from typing import Any

import _fuzz


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if _fuzz.COUNTS:
        _fuzz.write_counts(_fuzz.counts_path())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not _fuzz.COUNTS:
        return
    terminalreporter.section("bnlab fuzz cases")
    for target, count in sorted(_fuzz.COUNTS.items()):
        ok = _fuzz.OUTCOMES.get(f"{target}:ok", 0)
        terminalreporter.write_line(
            f"{target:<28} {count:5d} cases ({ok} compared, {count - ok} refused)"
        )
    terminalreporter.write_line(f"{'total':<28} {sum(_fuzz.COUNTS.values()):5d} cases")
