"""Reports render in headless Chromium with every figure decoded (skipped where Chromium is missing).

Each study's own tests check the report of the run they already trained (tests/test_study.py,
tests/test_segmentation_study.py, and the slow smoke runs of Inf-Net and the zoo); here the check itself is
tested, and a one-model zoo run, cheap enough for the fast suite, is rendered.
"""

from __future__ import annotations

import pytest

from tests.report_checks import CHROMIUM, NO_CHROMIUM, check_report, rendered


def test_a_one_model_zoo_report_renders(tmp_path, tiny_phantom_config):
    from lungnet.cli import main

    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    out = tmp_path / "run"
    tiny = "models=[{name: light_unet, model: {name: light_unet, depth: 2, filters: 4}}]"
    cache = f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"
    args = ["train", "segmentation-zoo", "--profile", "smoke", "--out", str(out), "--set", cache]
    assert main([*args, "--set", tiny]) == 0
    check_report(out / "report.html", tmp_path)


def test_a_broken_figure_is_caught(tmp_path):
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    report = tmp_path / "bad" / "report.html"
    report.parent.mkdir()
    report.write_text(
        '<html><body><img alt="truncated" src="data:image/png;base64,iVBORw0KGgo="></body></html>'
    )
    assert rendered(report, tmp_path) == {"images": 1, "broken": ["truncated"]}
