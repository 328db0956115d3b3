"""What the study notebooks leave behind: `make test` executes them all, and each run of notebook 05 wrote
1.6 GB of checkpoints into a folder nothing removed, until CI's disk was full."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_writes_only_into_folders_removed_when_its_kernel_stops(notebook):
    code = _code(notebook)
    calls = set(re.findall(r"tempfile\.(\w+)", code))
    assert calls <= {"TemporaryDirectory"}, f"{notebook.name} calls tempfile.{calls - {'TemporaryDirectory'}}"
    assert "mkdtemp" not in code and "mkstemp" not in code
