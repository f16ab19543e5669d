"""notebooks/threshold_tuning.ipynb runs headless, start to end, on a small report made here."""
from __future__ import annotations

import json

import pytest

from engine.cli import main as vmatch

from .conftest import REPO

NOTEBOOK = REPO / "notebooks" / "threshold_tuning.ipynb"


def test_notebook_is_saved_with_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] for c in code), "save the notebook with its outputs"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])


def test_notebook_executes_on_a_small_report(family_pairs_csv, tmp_path, monkeypatch, capsys):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e .[test])")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e .[test])")
    pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e .[test])")
    rep = tmp_path / "rep"
    assert vmatch(["eval", "--pairs", str(family_pairs_csv), "-o", str(rep), "--no-plots", "--device", "cpu"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("VMATCH_EVAL_REPORT", str(rep))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "report: rep: 105 pairs, 46 matches, 59 non-matches" in text
    assert "two-level at c1=0.7, c2=0.7" in text and "tp=   32 fp=    0" in text
    assert "score:\n  c1: " in text
    assert "chair" in text and "cross" in text  # the per-transform table uses the transform column
