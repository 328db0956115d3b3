"""benchmarks/suite_footprint.py: a command's temporary files at their peak, and what it leaves behind."""

import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("suite_footprint", ROOT / "benchmarks" / "suite_footprint.py")
suite_footprint = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite_footprint)


def test_the_peak_and_what_is_left_are_measured_in_the_commands_own_temporary_folder():
    script = textwrap.dedent(
        """
        import os, pathlib, tempfile, time
        folder = pathlib.Path(tempfile.gettempdir())
        (folder / "checkpoint.bin").write_bytes(bytes(3_000_000))
        time.sleep(1.0)
        (folder / "checkpoint.bin").unlink()  # cleaned up: counted in the peak only
        (folder / "kept.bin").write_bytes(bytes(1000))
        (folder / "__autograph_generated_fileabc.py").write_text("x = 1\\n")
        """
    )
    result = suite_footprint.measure([sys.executable, "-c", script], interval=0.1)
    assert result["returncode"] == 0
    assert 3_000_000 <= result["tmp_peak_bytes"] < 3_100_000
    left = result["left_behind"]
    assert left["other_entries"] == {"kept.bin": 1000} and left["other_bytes"] == 1000
    assert left["autograph_modules"] == 1
    assert result["samples"][-1]["tmp_bytes"] == 1000 + left["autograph_bytes"]


def test_a_failing_command_is_reported_not_hidden(tmp_path):
    out = tmp_path / "footprint.json"
    rc = suite_footprint.main(["--out", str(out), "--", sys.executable, "-c", "raise SystemExit(3)"])
    assert rc == 3 and '"returncode": 3' in out.read_text()
