"""Checks that a report.html renders in headless Chromium with all its figures decoded.

Used by each study's tests on the run folder they already trained. Where no Chromium is installed
(Debian: ``apt-get install chromium``) `check_report` skips with the reason. The check loads a copy of the
report with a small script added that, once the page has loaded, records how many images it has and which
of them failed to decode; Chromium's ``--dump-dom`` prints the DOM after that.
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
NO_CHROMIUM = (
    "headless Chromium not installed (Debian: apt-get install chromium): report rendering not checked"
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
    """Skip where Chromium is missing; else assert every <img> of `report` decodes."""
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    source = report.read_text()
    assert "</body>" in source, f"{report}: no </body>"
    result = rendered(report, tmp_path)
    assert result["images"] == source.count("<img ") > 0, result
    assert result["broken"] == [], f"{report}: figures that did not decode: {result['broken']}"
