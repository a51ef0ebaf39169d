"""The page: self-contained (nothing to load), escaped, every part present once."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from bnlab.report import build_report, write_report
from bnlab.report.files import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report_folders import make_all, make_lab, make_train

EVIL = '<script>alert("x")</script>\'&'
# A file name cannot hold "/": the same attack without the closing tag.
EVIL_NAME = '<script>alert("x")\'&'


def test_every_section_and_the_table_of_contents(tmp_path: Path) -> None:
    folders = make_all(tmp_path)
    report = build_report(folders.values(), title="All of it")
    page = report.html
    assert report.warnings == []
    assert [r.kind for r in report.results] == [
        "train",
        "d2l",
        "lab",
        "claims",
        "benchmark",
        "benchmark",
    ]
    for anchor in ("claims", "results", "environments", "r1", "r5"):
        assert f'href="#{anchor}"' in page
        assert f'id="{anchor}"' in page
    assert 'id="warnings"' not in page
    assert page.count("<img ") == 3  # train curves, d2l curves, lab figure
    assert page.count('<pre class="cmd">') == 5
    assert "<title>All of it</title>" in page


def test_verdicts_are_text_as_well_as_colour(tmp_path: Path) -> None:
    page = build_report(make_all(tmp_path).values()).html
    assert '<span class="badge v-holds">✓ holds</span> BN speeds up training' in page
    assert '<span class="badge v-fails">✗ does not hold</span>' in page
    assert '<span class="badge v-undecided">? undecided</span>' in page
    assert '<span class="badge v-not-supported">✗ not supported</span>' in page
    assert '<span class="badge v-not-measured">\u2013 not measured</span>' in page
    assert '<span class="badge v-supported">✓ supported</span>' in page


def test_nothing_is_loaded_from_outside(tmp_path: Path) -> None:
    page = build_report(make_all(tmp_path).values()).html
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page
    assert "url(" not in page
    for attr, value in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert value.startswith("data:image/png;base64," if attr == "src" else "#"), value


def test_text_from_folders_and_configs_is_escaped(tmp_path: Path) -> None:
    folder = make_lab(tmp_path / f"lab {EVIL_NAME}")
    results = json.loads((folder / "results.json").read_text())
    results["title"] = EVIL
    results["tables"][0]["rows"][0][0] = EVIL
    results["verdicts"][0]["measured"] = EVIL
    results["command"] = f"bnlab lab toy --set name={EVIL}"
    (folder / "results.json").write_text(json.dumps(results))
    train = make_train(tmp_path / "train")
    config = json.loads((train / "config.json").read_text())
    config["norm"] = EVIL
    (train / "config.json").write_text(json.dumps(config))
    page = build_report([folder, train, tmp_path / f"missing {EVIL_NAME}"], title=EVIL).html
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&amp;"
    assert page.count(escaped) >= 5
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&#x27;&amp;") >= 3  # folder names
    assert f"<title>{escaped}</title>" in page


def test_one_environment_section_per_distinct_environment(tmp_path: Path) -> None:
    a = make_train(tmp_path / "a")
    b = make_train(tmp_path / "b")
    page = build_report([a, b]).html
    assert page.count('<th id="e') == 1
    assert page.count('href="#e1"') == 2
    env = json.loads((b / "environment.json").read_text())
    env["git_revision"] = "fedcba9876543210"
    (b / "environment.json").write_text(json.dumps(env))
    page = build_report([a, b]).html
    assert page.count('<th id="e') == 2
    assert "<th>git revision</th><td>0123456789ab</td><td>fedcba987654</td>" in page
    assert "<th>torch</th><td>2.13.0+cpu</td><td>2.13.0+cpu</td>" in page
    assert "<th>CPU / GPU</th><td>Test CPU 3000</td><td>Test CPU 3000</td>" in page


def test_warnings_are_on_the_page(tmp_path: Path) -> None:
    page = build_report([make_lab(tmp_path / "lab"), tmp_path / "nowhere"]).html
    assert 'id="warnings"' in page
    assert f"skipped {tmp_path / 'nowhere'}: no such file or folder" in page


def test_write_report_is_atomic_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    report = write_report([make_lab(tmp_path / "lab")], out)
    assert report.path == out
    assert out.read_text(encoding="utf-8") == report.html
    write_report([make_train(tmp_path / "train")], out, title="second")
    assert "<title>second</title>" in out.read_text(encoding="utf-8")
    assert sorted(os.listdir(out.parent)) == ["report.html"]


def test_atomic_write_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    target.mkdir()  # os.replace onto a folder fails
    with pytest.raises(OSError, match=r"page\.html"):
        write_text_atomic(target, "x")
    assert os.listdir(tmp_path) == ["page.html"]


def test_nothing_readable_raises_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    with pytest.raises(ValueError, match="no results could be read") as error:
        write_report([tmp_path / "nowhere"], out)
    assert str(error.value) == (
        "no results could be read, so no report was written "
        f"(skipped {tmp_path / 'nowhere'}: no such file or folder)"
    )
    assert not out.exists()


def test_claims_evidence_is_readable_text(tmp_path: Path) -> None:
    folder = tmp_path / "claims"
    folder.mkdir()
    row = {
        "claim": "BN reduces ICS",
        "source": "seed.txt",
        "experiment": "ics",
        "evidence": {
            "quick": True,
            "lenet": {"drift_bn": 0.138794, "direction": "less"},
            "n": [1, 2],
        },
        "rule": "drift less with BN",
        "verdict": "mixed",
    }
    (folder / "claims.json").write_text(json.dumps([row]))
    page = build_report([folder]).html
    assert "<td>quick = yes, lenet: (drift_bn = 0.1388, direction = less), n = [1, 2]</td>" in page
    assert '<span class="badge v-mixed">± mixed</span>' in page


@pytest.mark.parametrize(
    ("verdict", "badge"),
    [
        ("supported", 'v-supported">✓'),
        ("refuted", 'v-not-supported">✗'),
        ("context-dependent", 'v-mixed">±'),
        ("inconclusive", 'v-undecided">?'),
        ("no verdict at this budget", 'v-not-measured">\u2013'),
    ],
)
def test_second_edition_verdicts_have_their_badges_and_the_literature_beside(
    tmp_path: Path, verdict: str, badge: str
) -> None:
    folder = tmp_path / "claims"
    folder.mkdir()
    row = {
        "claim": "BN degrades at small batch",
        "source": "seed.txt",
        "experiment": "batch-size",
        "rule": "paired t, Holm",
        "verdict": verdict,
        "literature": {
            "paper": "Wu & He 2018",
            "setting": "ImageNet ResNet-50",
            "numbers": "23.6 % at 32, 34.7 % at 2",
            "finding": "supported",
        },
        "agreement": "disagrees",
        "why": "800 steps",
    }
    (folder / "claims.json").write_text(json.dumps([row]))
    page = build_report([folder]).html
    assert f'<span class="badge {badge} {verdict}</span>' in page
    assert (
        "<td>Wu &amp; He 2018: 23.6 % at 32, 34.7 % at 2 (ImageNet ResNet-50); "
        "ours disagrees (800 steps)</td>"
    ) in page


def test_claims_show_the_interval_summary_and_the_experiments_figure(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "toy"
    run.mkdir(parents=True)
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
        b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05"
        b"\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    (run / "toy.png").write_bytes(png)
    folder = tmp_path / "claims"
    folder.mkdir()
    row = {
        "claim": "BN helps",
        "source": "seed.txt",
        "experiment": "toy",
        "evidence": {"metric": "acc", "settings": []},
        "summary": [
            "acc: bn - none (paired by seed, margin ±0.5)",
            "+1.2 [+0.8, +1.6] p_Holm=0.01",
        ],
        "figure": {"path": "../runs/toy/toy.png", "caption": "the curve"},
        "rule": "paired t",
        "verdict": "supported",
    }
    missing = dict(row, claim="BN helps too", figure={"path": "../runs/gone.png", "caption": ""})
    (folder / "claims.json").write_text(json.dumps([row, missing]))
    report = build_report([folder])
    page = report.html
    assert (
        "<td>acc: bn - none (paired by seed, margin ±0.5); +1.2 [+0.8, +1.6] p_Holm=0.01</td>"
    ) in page
    assert page.count('<img class="thumb" src="data:image/png;base64,') == 1
    assert 'alt="the curve"' in page
    # The verdict comes before the numbers; the declared rule is folded.
    row_html = page[page.index("<td>BN helps</td>") :]
    assert row_html.index("✓ supported") < row_html.index("acc: bn - none")
    assert "<td><details><summary>the rule</summary>paired t</details></td>" in row_html
    assert any("BN helps too" in w and "gone.png" in w for w in report.warnings)
