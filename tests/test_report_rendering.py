"""Every study's report.html renders in headless Chromium with all its figures decoded.

Skipped, with the reason, where no Chromium is installed (Debian: ``apt-get install chromium``). The check
loads a copy of the report with a small script added that, once the page has loaded, records how many
images it has and which of them failed to decode; Chromium's ``--dump-dom`` prints the DOM after that.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian: apt-get install chromium): report rendering not checked",
)

# Flags for a closed network and a root user (no sandbox), as Chromium needs them here.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
)
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt);
  document.body.setAttribute("data-render", JSON.stringify({images: images.length, broken: broken}));
});
</script>"""


def rendered(report: Path, tmp_path: Path) -> dict:
    """{"images": N, "broken": [alt, ...]} of `report` as headless Chromium loads it."""
    probe = tmp_path / f"probe-{report.parent.name}.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    profile = tmp_path / f"chromium-profile-{report.parent.name}"
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-render="([^"]*)"', done.stdout)
    assert found, f"{report}: the page's load event never ran in Chromium\n{done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def check_report(report: Path, tmp_path: Path) -> None:
    source = report.read_text()
    assert "</body>" in source, f"{report}: no </body>"
    result = rendered(report, tmp_path)
    assert result["images"] == source.count("<img ") > 0, result
    assert result["broken"] == [], f"{report}: figures that did not decode: {result['broken']}"


# (study, extra arguments): every study, each with its smoke profile; the zoo with one tiny model for time.
STUDIES = [
    ("binary-nodule", []),
    ("attention-unet", []),
    ("inf-net", []),
    (
        "segmentation-zoo",
        ["--set", "models=[{name: light_unet, model: {name: light_unet, depth: 2, filters: 4}}]"],
    ),
]


@pytest.mark.parametrize(("study", "extra"), STUDIES, ids=[s for s, _ in STUDIES])
def test_study_report_renders_with_every_figure(study, extra, tmp_path, tiny_phantom_config):
    from lungnet.cli import main

    out = tmp_path / "run"
    cache = f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"
    assert main(["train", study, "--profile", "smoke", "--out", str(out), "--set", cache, *extra]) == 0
    check_report(out / "report.html", tmp_path)
    if study == "binary-nodule":  # the external-set report of `lungnet evaluate` too
        evaluated = tmp_path / "evaluated"
        assert (
            main(["evaluate", str(out), "--data", external_manifest(tmp_path), "--out", str(evaluated)]) == 0
        )
        check_report(evaluated / "report.html", tmp_path)


def external_manifest(folder: Path) -> str:
    """A manifest of eight PNG slices of eight patients, half rated malignant."""
    import cv2
    import numpy as np
    import pandas as pd

    rows = []
    for i in range(8):
        cv2.imwrite(str(folder / f"n{i}.png"), np.full((50, 50), 20 * i, np.uint8))
        rows.append({"image": f"n{i}.png", "patient_id": f"P{i}", "malignancy": 1 + (i % 2) * 4})
    pd.DataFrame(rows).to_csv(folder / "external.csv", index=False)
    return str(folder / "external.csv")


def test_a_broken_figure_is_caught(tmp_path):
    report = tmp_path / "bad" / "report.html"
    report.parent.mkdir()
    report.write_text(
        '<html><body><img alt="truncated" src="data:image/png;base64,iVBORw0KGgo="></body></html>'
    )
    assert rendered(report, tmp_path) == {"images": 1, "broken": ["truncated"]}
