"""The report page in a headless Chromium: what a person would see (a screenshot) and whether the page rendered
(its tables and images, from the marks ``report_html``'s inline script puts on ``<body>``).

Chromium is optional (Debian: ``apt-get install chromium``); ``find_browser()`` is None without it. Each call
starts one browser process with a fresh temporary profile and ``--no-sandbox`` (it runs as root in containers,
and only ever opens the report's own local file).

    check = page_check("out/index.html")        # PageCheck(checked=True, images=8, images_ok=8, tables=24, ...)
    screenshot("out/index.html", "docs/images/report.png", width=1280)   # height: the whole page
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from reclm_jax.errors import UserError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ENV = "RECLM_JAX_CHROMIUM"  # a browser binary to use instead of the first of BROWSERS on PATH
MAX_HEIGHT = 16000  # px; a full-page screenshot taller than this is cut (PNG size, browser limits)


def find_browser() -> str | None:
    """The Chromium binary: ``$RECLM_JAX_CHROMIUM`` when set, else the first of ``BROWSERS`` on PATH, else None."""
    env = os.environ.get(ENV)
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(browser: str | None) -> str:
    found = browser or find_browser()
    if not found:
        raise UserError(f"no Chromium found (looked for {', '.join(BROWSERS)} on PATH and ${ENV}); install one, "
                        f"e.g. apt-get install chromium")
    return found


def _run(browser: str | None, args: list[str], html: Path, timeout: float) -> subprocess.CompletedProcess:
    html = Path(html).resolve()
    if not html.is_file():
        raise UserError(f"{html}: no such page")
    with tempfile.TemporaryDirectory(prefix="reclm_jax_chromium_") as profile:
        cmd = [_browser(browser), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
               f"--user-data-dir={profile}", *args, html.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "HOME": profile})
        except subprocess.TimeoutExpired:
            raise UserError(f"{cmd[0]} did not finish within {timeout:.0f} s on {html}") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise UserError(f"{cmd[0]} failed (exit {done.returncode}) on {html}:\n{tail}")
    return done


@dataclass(frozen=True)
class PageCheck:
    """What the page's check script wrote on ``<body>`` after the load event (-1: not written)."""
    checked: bool
    images: int
    images_ok: int
    tables: int
    height: int
    dom: str


class _BodyAttrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.attrs: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "body" and self.attrs is None:
            self.attrs = {k: v or "" for k, v in attrs}


def page_check(html: str | Path, browser: str | None = None, timeout: float = 180, width: int = 1280) -> PageCheck:
    """Loads the page headless in a window ``width`` px wide and returns its body marks: how many ``<img>``
    there are and how many decoded (``naturalWidth > 0``), how many ``<table>``, the page height in px (at that
    width), and the dumped DOM."""
    dom = _run(browser, ["--dump-dom", f"--window-size={int(width)},800"], Path(html), timeout).stdout
    parser = _BodyAttrs()
    parser.feed(dom)
    attrs = parser.attrs or {}

    def num(key: str) -> int:
        try:
            return int(attrs.get(key, "-1"))
        except ValueError:
            return -1

    return PageCheck(attrs.get("data-checked") == "1", num("data-images"), num("data-images-ok"),
                     num("data-tables"), num("data-height"), dom)


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int | None = None,
               browser: str | None = None, timeout: float = 180) -> Path:
    """Saves a PNG of the page as rendered at ``width`` px; ``height`` None means the whole page (measured by a
    first load, at most ``MAX_HEIGHT``). Returns ``png``."""
    png = Path(png).resolve()
    if not png.parent.is_dir():
        raise UserError(f"{png.parent}: no such folder for the screenshot")
    if height is None:
        measured = page_check(html, browser, timeout, width).height
        height = min(max(measured, 600), MAX_HEIGHT) if measured > 0 else 2000
    png.unlink(missing_ok=True)
    _run(browser, [f"--screenshot={png}", f"--window-size={int(width)},{int(height)}"], Path(html), timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise UserError(f"the browser wrote no screenshot at {png}")
    return png
