"""Headless Chromium for the tests that look at a page as a person would (Debian's `chromium`, installed by
`bash scripts/setup.sh --browser`), and the numbers a page shows with their summary.json paths. Flags as this
machine needs them: no sandbox (root), no GPU, and no background networking (the network is closed; Chromium
would otherwise retry at every start)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def find_chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the browser console (errors, uncaught exceptions, warnings)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def open_page(page: Path, screenshot: Path | None = None, width: int = 1200, height: int = 3000) -> tuple[str, list[str]]:
    """(the DOM after loading `page`, its console messages); with `screenshot`, a PNG of the page too."""
    browser = find_chromium()
    assert browser, "no Chromium"
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        base = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120,
                           check=True)
    return dom.stdout, console_messages(dom.stderr)


class Numbers(HTMLParser):
    """Every element's (data-key, data-value), in page order: a number on the page and its summary.json path."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-key" in attrs:
            self.found.append((attrs["data-key"], attrs["data-value"]))


def numbers_in(html: str) -> list[tuple[str, object]]:
    parser = Numbers()
    parser.feed(html)
    return [(key, json.loads(value)) for key, value in parser.found]


def lookup(summary: dict, key: str):
    """summary.json's value at a dotted path (list indices as numbers)."""
    node = summary
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def check_numbers_are_the_summary(page: str, summary: dict, required: tuple[str, ...]) -> None:
    """Every number the page tags equals summary.json's at its path, and each `required` path is on the page."""
    found = dict(numbers_in(page))
    missing = [key for key in required if key not in found]
    assert not missing, missing
    for key, value in found.items():
        assert value == lookup(summary, key), key
