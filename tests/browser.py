"""Headless-Chromium helper for the report's browser test (no Selenium/Playwright needed).

:func:`find_chromium` looks for ``$CHROMIUM``, then ``chromium``, ``chromium-browser``,
``google-chrome`` on ``PATH``. :func:`load_page` opens a local HTML file once with
``--dump-dom`` and ``--screenshot`` and returns the DOM after the load event, the console messages
the page produced (Chromium's ``--enable-logging=stderr`` lines ``INFO:CONSOLE...``) and the
screenshot path. :func:`require_chromium` skips a test when no browser is installed, except under
CI (``CI=true``), where a missing browser fails the test.

Flags: the browser runs as root in containers, hence ``--no-sandbox``; background networking,
component updates, sync and QUIC are off so that loading a local file makes no network traffic.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)$")


def find_chromium() -> str | None:
    """Path of a Chromium-family browser, or ``None``."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_chromium() -> str:
    """The browser path; skip the test when absent (fail under ``CI=true``)."""
    path = find_chromium()
    if path is None:
        msg = (
            "no Chromium found (set $CHROMIUM or install the Debian package `chromium`: "
            "apt-get install -y chromium)"
        )
        if in_ci():
            pytest.fail(f"CI=true and {msg}")
        pytest.skip(msg)
    return path


@dataclass
class PageLoad:
    dom: str
    console: list[str]
    stderr: str
    screenshot: Path | None
    returncode: int


def load_page(
    html: Path, workdir: Path, *, width: int = 1280, height: int = 2000, timeout: float = 120.0
) -> PageLoad:
    """Open ``html`` in headless Chromium; return the dumped DOM, console messages and a screenshot."""
    browser = require_chromium()
    workdir.mkdir(parents=True, exist_ok=True)
    shot = workdir / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={workdir / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        Path(html).resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    console = [m.group(1) for line in proc.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return PageLoad(proc.stdout, console, proc.stderr, shot if shot.is_file() else None, proc.returncode)
