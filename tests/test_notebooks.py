"""Every notebook runs top to bottom on the real data with its small settings, so none can rot.

The notebooks are executed as a user would run them (a fresh ``python3`` kernel from this
environment, ``TFRS_PIPELINE_DATA_DIR`` pointing at the data), and a cell that raises fails the test.
Outputs are never stored in git: a committed notebook with outputs fails too.
"""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("quickstart", "serving", "sessions")
CELL_TIMEOUT_S = 600


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


def test_notebooks_are_committed_without_outputs_and_open_in_colab():
    assert sorted(path.stem for path in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        notebook = read(name)
        nbformat.validate(notebook)
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), name
        assert "colab.research.google.com/github/" in notebook.cells[0].source
        assert f"notebooks/{name}.ipynb" in notebook.cells[0].source
        assert "pip" in code_cells[0].source and "find_spec(\"tfrs_pipeline\")" in code_cells[0].source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TFRS_PIPELINE_DATA_DIR", str(shared_data_dir))
    notebook = read(name)
    NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= {"quickstart": 5, "serving": 0, "sessions": 1}[name]
