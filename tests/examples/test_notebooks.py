"""The notebooks of ``examples/``: committed without outputs, and each runs end to end.

Each notebook is executed in a fresh Jupyter kernel (nbclient) with
``BNLAB_EXAMPLES_TINY=1``, the tiny budget every notebook reads (a few hundred images,
one epoch, ``quick`` lab configurations), so that each takes well under a minute on two
cores. They need the Fashion-MNIST files (``BNLAB_DATA_DIR`` or the shared copy) and are
skipped without them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bnlab.data.fashion_mnist import FILES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-mnist"


def _data_dir() -> Path | None:
    for candidate in (os.environ.get("BNLAB_DATA_DIR"), SHARED):
        if candidate and (Path(candidate) / FILES[0].name).is_file():
            return Path(candidate).resolve()
    return None


def test_there_are_the_three_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "d2l_chapter.ipynb",
        "drop_in_layers.ipynb",
        "lab_experiment.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: strip the outputs before committing"
            assert cell["execution_count"] is None, f"{path.name}: strip the execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_reads_the_tiny_budget(path: Path) -> None:
    source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    assert 'os.environ.get("BNLAB_EXAMPLES_TINY") == "1"' in source
    assert "FULL = False" in source  # small by default, one variable for the full budget


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(
    _data_dir() is None, reason=f"no Fashion-MNIST copy: set BNLAB_DATA_DIR or provide {SHARED}"
)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this process's environment.
    monkeypatch.setenv("BNLAB_EXAMPLES_TINY", "1")
    monkeypatch.setenv("BNLAB_DATA_DIR", str(_data_dir()))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the run folders of the calls
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback
    elapsed = time.perf_counter() - started
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o for o in outputs if "text/html" in o.get("data", {})]
    assert html, "the results show themselves as HTML"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "a figure is shown as a matplotlib object"
    print(f"{path.name}: {elapsed:.1f} s")
