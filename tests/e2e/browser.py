"""Headless Chromium for tests that look at a page as a user would.

The browser is Debian's `chromium` (no `playwright install`: that downloads a browser, and the machines that run
these tests have no internet), driven by Playwright through its `executable_path`.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Without the networking flags Chromium keeps dialling Google's hosts, which a closed network refuses, many at a
# time. Playwright gives every launch a fresh, empty profile of its own (its --user-data-dir), so none is passed.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1600, "height": 1000}


def require_chromium() -> str:
    """The browser to drive ($CHROMIUM, else Debian's) with Playwright importable; fails, never skips, without them.

    A skipped browser test would read as a passing UI. Call it before slow set-up, so a missing browser costs seconds.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing from this environment: `make install`", pytrace=False)
    wanted = os.environ.get("CHROMIUM", DEFAULT_CHROMIUM)
    found = shutil.which(wanted)
    if found is None:
        pytest.fail(f"no Chromium at {wanted}: install Debian's with `make browser` (apt-get install -y chromium), "
                    "or point $CHROMIUM at one", pytrace=False)
    return found


def artifacts_dir(name: str) -> Path:
    """$TEST_ARTIFACTS_DIR/<name>, else .state/test-artifacts/<name>: git-ignored, and kept after the run for people."""
    root = Path(os.environ.get("TEST_ARTIFACTS_DIR") or PROJECT_ROOT / ".state" / "test-artifacts")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium_page(executable: str, folder: Path) -> Iterator[Screenshots]:
    """A fresh page; when a step fails, the page as it stood is kept as failure.png, which says more than a trace."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(TIMEOUT_MS)
            shots = Screenshots(page, folder)
            try:
                yield shots
            except BaseException:
                shots.take("failure")
                raise
        finally:
            browser.close()


class Screenshots:
    """The page and what it showed at each step, for a person to check what the assertions could not."""

    def __init__(self, page, folder: Path):
        self.page, self.folder = page, folder
        self.paths: list[Path] = []

    def take(self, name: str) -> Path:
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (the signature, then IHDR's first two fields)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])
