"""Every lab notebook runs top to bottom: jupytext turns examples/labs/NN-*.py into a notebook, nbclient executes
it in a fresh kernel (cwd: a temporary folder, so figures land there), and any cell error fails the test.

    scripts/test.sh -m labs                                    # what CI runs, after the default suite
    DIFFLAB_LABS_MODEL=sdxl scripts/test.sh -m labs            # the same notebooks on another model (a GPU)

Each notebook has its own time budget (``DIFFLAB_LABS_TIMEOUT`` seconds, default 300): a notebook that hangs or
slows down several-fold fails instead of holding CI. Labs 2-6 need the bundled text-to-image model; they are
skipped, with the reason, only while its weights are absent and no other model is named.
"""

from __future__ import annotations

import asyncio
import os
import resource
import re
import time
from pathlib import Path

import pytest

LABS_DIR = Path(__file__).resolve().parents[2] / "examples" / "labs"
LABS = sorted(LABS_DIR.glob("[0-9][0-9]-*.py"))
MODELS = Path(__file__).resolve().parents[2] / "src" / "difflab" / "models"
TINY_SHAPES = MODELS / "tiny-shapes" / "model_index.json"
CANNY_CONTROLNET = MODELS / "tiny-shapes-controlnet-canny" / "config.json"  # issue 5's bundled ControlNet
# the one line every lab starts with; DIFFLAB_LABS_MODEL rewrites it, as a learner on a GPU would by hand
MODEL_LINE = re.compile(r'^MODEL = "tiny-shapes"', re.MULTILINE)
DEFAULT_TIMEOUT = 300  # seconds per notebook: each takes 1-2 minutes alone on 2 CPU cores

pytestmark = pytest.mark.labs


def test_every_lab_is_here() -> None:
    names = [path.stem for path in LABS]
    assert [name[:2] for name in names] == ["01", "02", "03", "04", "05", "06"], names


@pytest.mark.parametrize("lab", LABS, ids=[path.stem for path in LABS])
def test_lab_starts_with_the_model_cell(lab: Path) -> None:
    jupytext = pytest.importorskip("jupytext", reason="the lab tests need the labs extra: pip install -e '.[labs]'")
    notebook = jupytext.read(lab)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and code[0].source.strip() == 'MODEL = "tiny-shapes"', f"{lab.name}: first code cell is not the MODEL cell"
    assert not any(cell.get("outputs") for cell in code), f"{lab.name}: outputs are stored in the source"


@pytest.mark.parametrize("lab", LABS, ids=[path.stem for path in LABS])
def test_lab_runs_top_to_bottom(lab: Path, tmp_path: Path) -> None:
    jupytext = pytest.importorskip("jupytext", reason="the lab tests need the labs extra: pip install -e '.[labs]'")
    nbclient = pytest.importorskip("nbclient", reason="the lab tests need the labs extra: pip install -e '.[labs]'")
    model = os.environ.get("DIFFLAB_LABS_MODEL")
    notebook = jupytext.read(lab)
    if model is None and not lab.name.startswith("01-") and not TINY_SHAPES.is_file():
        pytest.skip(f"{lab.name} runs on the bundled tiny-shapes model, whose weights are not in {TINY_SHAPES.parent} "
                    "yet (or set DIFFLAB_LABS_MODEL to another model)")
    if model is None and lab.name.startswith("03-") and not CANNY_CONTROLNET.is_file():
        pytest.skip(f"{lab.name} runs the bundled canny ControlNet (issue 5), which is not in {CANNY_CONTROLNET.parent} yet")
    if model is not None:
        first = next(cell for cell in notebook.cells if cell.cell_type == "code")
        first.source = MODEL_LINE.sub(f"MODEL = {model!r}", first.source)
    budget = float(os.environ.get("DIFFLAB_LABS_TIMEOUT", DEFAULT_TIMEOUT))
    client = nbclient.NotebookClient(notebook, timeout=int(budget), kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    try:
        # the cell timeout alone would let six slow cells take six budgets: the whole notebook gets one
        asyncio.run(asyncio.wait_for(client.async_execute(), timeout=budget))
    except asyncio.TimeoutError:
        pytest.fail(f"{lab.name} did not finish within {budget:.0f} s (DIFFLAB_LABS_TIMEOUT)")
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{lab.name} failed:\n{error}")
    finally:
        executed = tmp_path / lab.with_suffix(".ipynb").name
        import nbformat

        nbformat.write(notebook, executed)  # the executed copy, for a look at what failed
    seconds = time.perf_counter() - started
    # the kernel is a child process: its CPU time counts here once it has exited
    print(f"{lab.name}: {seconds:.0f} s wall, {_children_cpu_seconds() - cpu_before:.0f} s CPU, executed copy {executed}")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
