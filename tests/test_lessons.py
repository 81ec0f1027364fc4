"""Every lesson notebook runs top to bottom in fast mode (MINIFCN_FAST=1), and none is committed with outputs.

The lessons that reach for minifcn.fast run a second time with it blocked, as in the student package that
`python -m minifcn.assignments make` writes (it leaves fast.py out). Lesson 10 runs once more with its GPU
cells on tests/fake_cupy.py."""
import json
import os
from pathlib import Path

import pytest

import fake_cupy

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("*.ipynb"))


def test_there_are_lessons():
    assert len(LESSONS) >= 1


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_committed_notebook_has_no_outputs_and_cell_ids(path):
    raw = json.loads(path.read_text())                  # nbformat.read would fill missing ids in silently
    missing = [i for i, cell in enumerate(raw["cells"]) if "id" not in cell]
    assert not missing, f"{path.name} cells {missing} have no id (nbformat 4.5 wants one): open and save it in Jupyter"
    ids = [cell["id"] for cell in raw["cells"]]
    assert len(set(ids)) == len(ids), f"{path.name} has two cells with one id (a copied cell?): give one a new id"
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, \
                f"{path.name} cell {i} carries outputs: clear them before committing"


def run_notebook(path, tmp_path, monkeypatch, pythonpath=()):
    """Execute the notebook at `path` in fast mode, in a scratch folder; raise on any error or failed assert."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MINIFCN_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))        # anything a lesson puts in a temporary folder goes with tmp_path
    paths = [*pythonpath, str(path.parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()   # raises CellExecutionError, naming the cell, on any error or failed assert
    return nb


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_fast_mode(path, tmp_path, monkeypatch):
    run_notebook(path, tmp_path, monkeypatch)


USING_FAST = [p for p in LESSONS if "fast" in p.read_text().replace("MINIFCN_FAST", "").replace("FAST", "")
              and ("import fast" in p.read_text() or "minifcn.fast" in p.read_text())]


def test_some_lessons_use_the_fast_paths():
    assert len(USING_FAST) >= 2          # else the test below checks nothing


@pytest.mark.parametrize("path", USING_FAST, ids=[p.stem for p in USING_FAST])
def test_lesson_runs_without_the_fast_paths(path, tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # sitecustomize runs at the kernel's start: importing minifcn.fast then raises ImportError, as in the handout
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['minifcn.fast'] = None\n")
    run_notebook(path, tmp_path, monkeypatch, pythonpath=[str(blocker)])


def test_lesson_10_gpu_cells_run_on_the_cupy_stand_in(tmp_path, monkeypatch):
    """Lesson 10's GPU branch (moving arrays, the same op on both devices, the memory pool, the kernels on and off)
    on tests/fake_cupy.py: without a GPU its GPU cells would otherwise never run."""
    site = tmp_path / "site"
    site.mkdir()
    nb = run_notebook(LESSONS_DIR / "10_gpu.ipynb", tmp_path, monkeypatch, pythonpath=[str(fake_cupy.write_site(site))])
    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "GPU: fake_cupy" in printed and "GPU pool: used" in printed     # the GPU cells ran, not their CPU notes
