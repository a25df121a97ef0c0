"""The report page as a person sees it: opened from file:// in a headless Chromium, it shows every table and
image (the page's own marks in the dumped DOM) and a screenshot that is not blank. Skipped without Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reclm_jax.errors import UserError
from reclm_jax.eval import report, report_browser
from reclm_jax.testing.eval_runs import TEST_TASKS, write_synthetic_run

pytestmark = pytest.mark.skipif(
    report_browser.find_browser() is None,
    reason="no Chromium on PATH (apt-get install chromium): the rendering check needs a browser")


def test_page_renders_tables_and_images_and_screenshot_is_not_blank(tmp_path):
    import matplotlib.image as mpimg

    runs = [write_synthetic_run(tmp_path, "sft", "model", 1), write_synthetic_run(tmp_path, "rl", "model", 2),
            write_synthetic_run(tmp_path, "teacher", "teacher", 3, outputs=False)]
    out, shot = tmp_path / "rep", tmp_path / "shot.png"
    assert report.main([*map(str, runs), "--out", str(out), "--screenshot", str(shot),
                        "--screenshot-height", "1600"]) == 0
    rep = json.loads((out / "report.json").read_text())
    check = report_browser.page_check(out / "index.html")
    assert check.checked, check.dom[:500]
    assert check.images == len(rep["plots"]) == len(TEST_TASKS) + 1 and check.images_ok == check.images
    assert check.tables == 1 + 2 + 1 + 2 * len(TEST_TASKS)  # runs, summary x2, failures, per task x2
    assert check.height > 3000
    img = mpimg.imread(shot)
    assert img.shape[:2] == (1600, 1280)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05 and len(np.unique((rgb[::97] * 255).astype(np.uint8), axis=0)) > 50
    # The check can fail: a missing image is counted but not decoded.
    (out / rep["plots"]["control"]).unlink()
    broken = report_browser.page_check(out / "index.html")
    assert broken.images == check.images and broken.images_ok == check.images - 1


def test_missing_page_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such page"):
        report_browser.page_check(tmp_path / "nope.html")
