"""The demo notebooks run top to bottom with small parameters (a failing cell fails).

Each notebook's cell tagged ``parameters`` is replaced by the CI values below, and the
notebook is executed in a copy (the committed file, with its real-run outputs, is not
touched) by nbclient on a kernel that runs THIS interpreter: a kernelspec written to a
temporary folder put first on ``JUPYTER_PATH``, so no user or system ``python3`` kernel
can be picked up; a last cell asserts it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

# ipykernel (the kernel below runs `python -m ipykernel_launcher`) comes with the `test` extra

DEMOS = Path(__file__).resolve().parents[1] / "demos"
KERNEL = "crypten-mpcache-test"

# notebook -> (CI parameters, timeout in seconds for the whole notebook)
NOTEBOOKS = {
    "accuracy_plaintext.ipynb": (
        'CONTEXT = 256\nBUDGET = 0.2\nSAMPLE = 0\n'
        'METHODS = ["full", "mpcache", "quest", "snapkv", "streaming"]\n', 120),
    "own_function_mpc.ipynb": ("DIM = 32\nN = 32\nTOKENS = 2\nK = 4\n", 90),
    # the tiny config-built Llama (SmolLM2's tokenizer), as `demos/private_generation.py --tiny`
    "private_generation.ipynb": (
        'PROMPT = "What is the capital of France?"\nTINY = True\nMAX_NEW_TOKENS = 2\n', 90),
    # the saved Llama-shape runs are read, not re-run; the live bench: one tiny-shape context
    "mpcache_under_mpc.ipynb": ("LIVE_CONTEXTS = (1024,)\nLIVE_STEPS = 1\n", 90),
}


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


@pytest.fixture()
def this_python_kernel(tmp_path, monkeypatch) -> str:
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "crypten_mpcache tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(tmp_path), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return KERNEL


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_has_real_run_outputs(name):
    nb = nbformat.read(DEMOS / name, as_version=4)
    _parameters_cell(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: commit it executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: committed outputs contain an error"
    assert nb.cells[0].cell_type == "markdown", f"{name}: first cell says what it shows"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_top_to_bottom_with_ci_parameters(name, this_python_kernel):
    params, timeout = NOTEBOOKS[name]
    nb = nbformat.read(DEMOS / name, as_version=4)
    nb.cells[_parameters_cell(nb)].source = params
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable"))
    client = nbclient.NotebookClient(
        nb, kernel_name=this_python_kernel, timeout=timeout, allow_errors=False,
        resources={"metadata": {"path": str(DEMOS)}})
    start = time.monotonic()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.monotonic() - start
    assert elapsed < timeout, f"{name} took {elapsed:.0f} s (limit {timeout} s)"
