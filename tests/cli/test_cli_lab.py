"""``bnlab lab``: listing, per-experiment help, a quick run end to end, usage errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

import bnlab.cli.lab as cli_lab
from bnlab.cli.main import main
from bnlab.lab import experiment as ex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
import _toy


@pytest.fixture(autouse=True)
def toy():
    ex.register_lab(_toy.SPEC, overwrite=True)
    yield _toy.SPEC
    ex._LABS.pop(_toy.SPEC.name, None)


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "--list"]) == 0
    assert "toy-test" in capsys.readouterr().out


def test_experiment_help_shows_claim_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "toy-test", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "a exceeds b by the shift" in out
    assert "size = 1000   (quick: 50)" in out
    assert "full run: instant" in out


def test_quick_run_then_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one verdict per line
    out = tmp_path / "run"
    argv = [
        "lab",
        "toy-test",
        "--out",
        str(out),
        "--quick",
        "--seeds",
        "2",
        "--set",
        "shift=1.5",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # A --quick run decides nothing: the rule's outcome is shown, the verdict withheld.
    assert "a exceeds b: budget too small to decide (rule: holds)" in printed
    assert "the budget is too small to decide (a --quick run" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seeds"] == 2
    assert results["config"]["shift"] == 1.5
    assert (
        results["command"]
        == f"bnlab lab toy-test --out {out} --quick --set shift=1.5 --set seeds=2"
    )
    assert (out / "environment.json").exists()
    assert main(argv) == 1
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "2 finished units reused" in capsys.readouterr().out


def test_bad_setting_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "toy-test", "--out", str(tmp_path), "--set", "nope=1"])
    assert exit_.value.code == 2
    assert "unknown setting 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lab", "toy-test", "--out", str(tmp_path), "--set", "novalue"])
    assert "expected KEY=VALUE, got 'novalue'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "decides"),
    [(["--seeds", "2"], True), (["--seeds", "1"], False), (["--quick"], False)],
    ids=["2 seeds", "1 seed", "quick"],
)
def test_verdicts_of_a_tiny_run_say_so(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    decides: bool,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["lab", "toy-test", "--out", str(tmp_path / "run"), "--no-progress", *argv]) == 0
    printed = capsys.readouterr().out
    assert ("a exceeds b: holds" in printed) is decides
    assert ("budget too small to decide" in printed) is not decides
    # results.json keeps the rule's verdict either way (printed after "rule:").
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    holds = results["verdicts"][0]["holds"]
    mark = {True: "holds", False: "does not hold"}.get(holds, "undecided")
    assert decides or f"(rule: {mark})" in printed


BORDERS = "│┃┓┐┩┤┘"


def assert_fits(text: str, width: int = 80) -> None:
    """No line wider than ``width``, no cell cut ("…"), every table line closed."""
    lines = text.splitlines()
    assert lines
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    assert "…" not in text
    for line in lines:
        if line[:1] in "┏┃┡│├└":
            assert line.rstrip()[-1] in BORDERS + "┛┫╇┼┴━─", line


def _render(*renderables: object) -> str:
    console = Console(width=80, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        for renderable in renderables:
            console.print(renderable)
    return capture.get()


def test_lab_tables_fit_80_columns() -> None:
    # A wide experiment table as the lab writes them (the ics one has seven columns of
    # "0.3669 ± 0.00764" and a network column of "LeNet (sigmoid)").
    columns = ["network", "variant", "drift per probe (1)", "grad cos (2)", "grad rel. (2)"]
    columns += ["final train loss", "test acc", "per-layer grad l2 change (2)"]
    rows = [
        ["LeNet (sigmoid)", name, *(f"{0.1 * i:.4g} ± {0.001 * i:.3g}" for i in range(1, 7))]
        for name in ("none", "bn", "bn-noise")
    ]
    results = {
        "tables": [
            {"title": "Internal covariate shift (mean ± std)", "columns": columns, "rows": rows}
        ],
        "verdicts": [{"claim": "BN reduces drift " * 6, "holds": True, "measured": "x=1 " * 30}],
        "notes": ["a note " * 20],
        "config": {"seeds": 1},
    }
    console = Console(width=80, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        cli_lab._print_results(console, results)
    text = capture.get()
    assert_fits(text)
    assert "0.6 ±" in text.replace("\n", " ")  # folded, not cut
    assert "budget too small to decide" in text.replace("\n", " ")


def test_claims_table_fits_80_columns() -> None:
    rows = [
        {
            "claim": "BN reduces internal covariate shift " * 3,
            "source": "Santurkar et al. 2018, arXiv 1805.11604, 000_3d8114077ba70cad.txt",
            "experiment": "ics",
            "verdict": verdict,
            "evidence": {
                "quick": True,
                "mlp-relu": {"rel_change_none_and_a_long_key": 0.765912345, "direction": "less"},
                "values": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
            },
        }
        for verdict in ("supported", "not supported", "mixed", "not measured")
    ]
    text = _render(cli_lab.claims_table(rows))
    assert_fits(text)
    assert "not supported" in text


def test_claims_table_shows_the_summary_and_the_literature_verdict() -> None:
    literature = {"paper": "Wu & He 2018", "finding": "supported", "numbers": "", "setting": ""}
    rows = [
        {
            "claim": "BN degrades at small batch",
            "source": "seed.txt",
            "experiment": "batch-size",
            "verdict": verdict,
            "evidence": {"quick": False, "metric": "acc", "settings": []},
            "summary": ["acc: bn-vb2 - bn-vb32", "-5.11 [-5.61, -4.62] p_Holm=2e-05"],
            "literature": literature,
            "agreement": agreement,
            "why": "800 steps on a CPU",
        }
        for verdict, agreement in (("inconclusive", "undecided"), ("not measured", "undecided"))
    ]
    rendered = _render(cli_lab.claims_table(rows))
    assert_fits(rendered)
    assert "-5.11 [-5.61, -4.62]" in rendered
    assert rendered.count("ours undecided") == 2
    measured, unmeasured = (cli_lab._literature_lines(row) for row in rows)
    assert measured == [
        "[dim]literature (Wu & He 2018): supported; ours undecided[/dim]",
        "[dim]why: 800 steps on a CPU[/dim]",
    ]
    # Why it differs is said only where our verdict was measured.
    assert unmeasured == measured[:1]
