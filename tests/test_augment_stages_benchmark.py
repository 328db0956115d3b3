"""benchmarks/augment_stages.py: every stage of the zoo's augmentation and Inf-Net's multi-scale batches timed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("augment_stages", ROOT / "benchmarks" / "augment_stages.py")
augment_stages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(augment_stages)


def test_one_call_per_stage_writes_every_stage(tmp_path):
    out = tmp_path / "stages.json"
    assert augment_stages.main(["--calls", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["stages"]) == len(augment_stages.STAGES) + 1  # + the multi-scale batches
    assert all(s["cpu_ms_per_image"] > 0 and s["wall_ms_per_image"] > 0 for s in result["stages"].values())
    assert (Path(result["lungnet"]) / "data" / "augmentation.py").is_file()  # which checkout was measured
