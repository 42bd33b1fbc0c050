"""The HTML report of `mixtures.validate` opened in a real headless Chromium: it renders (the screenshot is not
blank) and the page's text holds the shares table. Skipped only where no Chromium is installed; CI installs the
Debian package and sets IDEFICS2_REQUIRE_CHROMIUM=1, so a missing browser fails there instead."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from PIL import Image, ImageStat

from tests.conftest import run_command
from tests.test_validate import make_sample, write_mixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("IDEFICS2_REQUIRE_CHROMIUM") == "1"
pytestmark = pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason="no chromium or chromium-browser on PATH")


def chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile and no network (the page must need none)."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={cwd / 'profile'}", "--proxy-server=127.0.0.1:9",
                           "--window-size=1200,2000", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_report_renders_in_headless_chromium(tmp_path):
    assert CHROMIUM, "IDEFICS2_REQUIRE_CHROMIUM=1 but no chromium or chromium-browser on PATH"
    folder = write_mixture(tmp_path / "m", {"obelics": 66, "pairs": 33},
                           extra_samples=[make_sample("pairs-big", "pairs", size=(500, 300), text="<b>not bold</b>")])
    page = tmp_path / "report.html"
    result = run_command("mixtures.validate", str(folder), "--html", str(page))
    assert result.returncode == 1  # skewed and an image over the cap: the page shows why
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        stat = ImageStat.Stat(image.convert("L"))
        assert stat.stddev[0] > 10  # not one flat colour
        colours = image.convert("RGB").getcolors(1 << 20)
        assert any(r > 150 and g < 90 and b < 90 for _, (r, g, b) in colours)  # the red FAILED lines
        assert any(b > 150 and r < 100 for _, (r, g, b) in colours)  # the blue bars and thumbnails
    dom = chromium("--dump-dom", page.as_uri(), cwd=tmp_path).stdout
    assert '<table id="shares">' in dom
    for cell in ("<td>obelics</td>", "<td>66.00%</td>", "<td>70.00%</td>", "<td>pairs</td>", "<td>34.00%</td>",
                 "<td>30.00%</td>"):
        assert cell in dom
    assert "pairs: 1 images over the image size cap" in dom and "&lt;b&gt;not bold&lt;/b&gt;" in dom
