"""The documentation notebook: committed with outputs, sections in order, and it still runs top to bottom.

Regenerate it with ``python scripts/build_notebook.py`` when the package or the cells change.
"""

import re
import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "retinanet_pipeline.ipynb"
SECTIONS = [
    "1. Dataset sources", "2. Data preparation", "3. Model development", "4. Training pipeline",
    "5. Evaluation metrics", "6. Inference pipeline", "7. Loading pretrained weights", "8. Grad-CAM",
    "9. FROC and the operating point",
]
CELL_TIMEOUT_S = 300
TOTAL_LIMIT_S = 420
# The model trained in section 4 must detect: on BCCD (in ../shared) and on the shapes fallback.
MIN_AP50 = {"BCCD": 0.5, "shapes": 0.5}
# The run in the suite trains 4 epochs instead of the committed notebook's 240 s budget: that one is the build
# script's (its outputs are checked above), and in the suite it would be the longest test by far. Epochs, not a
# shorter budget, so that the check does not depend on how fast the host is or what runs beside it (BCCD, one
# thread: AP50 0.429 after 4 epochs; a 120 s budget gave 0.131 alone and 0.049 beside the other test worker).
BUDGET = ("time=240", "epochs=4")
MIN_AP50_SHORT = {"BCCD": 0.2, "shapes": 0.2}


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_has_sections_in_order(committed):
    headings = [c.source.splitlines()[0][3:].strip() for c in committed.cells
                if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert headings == SECTIONS


def test_committed_notebook_has_outputs(committed):
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert code
    missing = [i for i, c in enumerate(code) if not c.outputs or c.execution_count is None]
    assert not missing, f"code cells without outputs (rebuild with scripts/build_notebook.py): {missing}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "the committed notebook holds error outputs"


def detection_quality(nb) -> tuple[str, float]:
    """(the data the notebook trained on, the val AP50 it printed)."""
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    data = re.search(r"data: (BCCD|shapes); trained", text)
    ap50 = re.search(r"val AP50 (\d\.\d+)", text)
    assert data and ap50, "the notebook prints its data and val AP50"
    return data.group(1), float(ap50.group(1))


def test_committed_notebook_shows_a_detector_that_works(committed):
    data, ap50 = detection_quality(committed)
    assert ap50 >= MIN_AP50[data], f"{data}: val AP50 {ap50} below {MIN_AP50[data]}"


@pytest.mark.slow
@pytest.mark.timeout(TOTAL_LIMIT_S + 60)  # the kernel's start and shutdown on top of the notebook's own limit
def test_notebook_executes(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    copy = tmp_path / NOTEBOOK.name
    shutil.copyfile(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    training = [c for c in nb.cells if c.cell_type == "code" and BUDGET[0] in c.source]
    assert len(training) == 1, f"one training cell with {BUDGET[0]}"
    training[0].source = training[0].source.replace(*BUDGET)
    # The kernel runs in notebooks/, as when a reader opens the notebook: its relative paths (../../shared) hold.
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    elapsed = time.perf_counter() - t0
    nbformat.write(nb, copy)  # the executed copy, for inspection when something looks off
    assert elapsed < TOTAL_LIMIT_S, f"the notebook took {elapsed:.0f} s (limit {TOTAL_LIMIT_S} s)"
    data, ap50 = detection_quality(nb)
    assert ap50 >= MIN_AP50_SHORT[data], f"{data}: val AP50 {ap50} below {MIN_AP50_SHORT[data]} after {BUDGET[1]}"
