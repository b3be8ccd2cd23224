"""Headless Debian Chromium driven through selenium and Debian's chromedriver: no browser download.

`chromium()` starts a fresh, isolated browser (its own --user-data-dir, no network features:
no QUIC, no background networking, no component updates, no sync); the binaries are Debian's
`chromium` and `chromium-driver` packages (`make browser` installs them, as root). The page
checks read the DOM of the loaded page — what the browser rendered, not the HTML text:

- `report_problems(driver)`: every plot is an <img> that loaded (complete, naturalWidth > 0),
  the fork table has one row per recorded step at least, each with an inspector link, and the
  teacher table has a row;
- `inspector_problems(driver)`: the tokens rendered, each audited chunk is outlined, each fork
  section shows as many teacher-sample rows as its N_eff, each with text and a phi.

`python -m tests.browser URL PNG [HEIGHT] [-- URL PNG [HEIGHT] ...]` takes screenshots (docs/img/).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900")
PLOTS = ("pihat", "agreement", "kl", "loss", "length", "spend", "cache")


def missing_browser() -> str | None:
    """Why the browser cannot start here (None when it can)."""
    gone = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if gone:
        return (f"{', '.join(gone)} missing: run `make browser` as root (apt-get install chromium chromium-driver); "
                "`make test` does it for you")
    return None


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver or a browser
    profile = tempfile.mkdtemp(prefix="omniopd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_screenshot(driver, path: str | Path, width: int = 1280, height: int | None = None) -> Path:
    """The whole page (or, with `height`, the top `height` pixels from where the URL's #anchor scrolled)."""
    if height is None:
        driver.set_window_size(width, 600)  # measure at a small viewport: a tall one pads the page
        height = int(driver.execute_script("return document.documentElement.scrollHeight")) + 40
    driver.set_window_size(width, min(max(height, 300), 8000))
    if "#" in driver.current_url:  # resizing loses the anchor's scroll position
        driver.execute_script("document.getElementById(location.hash.slice(1))?.scrollIntoView()")
    driver.save_screenshot(str(path))
    return Path(path)


_REPORT_JS = """
const imgs = [...document.querySelectorAll('#plots figure')].map(f => {
  const img = f.querySelector('img');
  return {id: f.id, loaded: !!img && img.complete && img.naturalWidth > 0, w: img ? img.naturalWidth : 0,
          shown: !!img && img.getBoundingClientRect().width > 0};
});
const rows = [...document.querySelectorAll('#fork-table tr.fork-row')].map(r => ({
  step: r.dataset.step, link: (r.querySelector('a') || {}).href || '', cells: r.querySelectorAll('td').length,
  shown: r.getBoundingClientRect().height > 0}));
return {imgs, rows, teachers: document.querySelectorAll('#teacher-table tr').length - 1,
        config: (document.querySelector('#config') || {}).textContent || ''};
"""


def report_problems(driver, steps: list[int], plots: tuple[str, ...] = PLOTS) -> list[str]:
    """What is missing from the loaded report page (empty: everything rendered)."""
    got = driver.execute_script(_REPORT_JS)
    problems = []
    by_id = {i["id"]: i for i in got["imgs"]}
    for name in plots:
        img = by_id.get(f"plot-{name}")
        if img is None:
            problems.append(f"plot {name}: not on the page")
        elif not (img["loaded"] and img["shown"]):
            problems.append(f"plot {name}: the image did not load (naturalWidth {img['w']})")
    rows = [r for r in got["rows"] if r["shown"]]
    if not rows:
        problems.append("fork table: no rows rendered")
    missing_steps = sorted(set(map(str, steps)) - {r["step"] for r in rows})
    if missing_steps:
        problems.append(f"fork table: no row for steps {', '.join(missing_steps)}")
    problems += [f"fork table: step {r['step']} row has no inspector link" for r in rows if ".html#fork-" not in r["link"]]
    if got["teachers"] < 1:
        problems.append("teacher table: no rows")
    if "teacher:" not in got["config"]:
        problems.append("config: not shown")
    return problems


_INSPECT_JS = """
const forks = [...document.querySelectorAll('section.fork')].map(s => ({
  id: s.id, n: parseInt([...s.querySelectorAll('.stats span')].find(x => x.innerText.startsWith('N'))
                .querySelector('b').innerText),
  samples: [...s.querySelectorAll('tr.teacher-sample')].map(r => ({
     text: r.querySelectorAll('td')[1].innerText.trim(), phi: r.querySelector('td.phi').innerText.trim()})),
  student: (s.querySelector('tr.student td.mono') || {}).innerText || '',
  shown: s.getBoundingClientRect().height > 0}));
return {tokens: document.querySelectorAll('#tokens .tok').length,
        chunks: document.querySelectorAll('#tokens .chunk').length, forks,
        target: location.hash ? !!document.querySelector(location.hash) : true};
"""


def inspector_problems(driver) -> list[str]:
    """What is missing from the loaded inspector page (empty: everything rendered)."""
    got = driver.execute_script(_INSPECT_JS)
    problems = []
    if got["tokens"] == 0:
        problems.append("no tokens rendered")
    if not got["forks"]:
        problems.append("no fork section rendered")
    if got["chunks"] != len(got["forks"]):
        problems.append(f"{got['chunks']} outlined chunks for {len(got['forks'])} forks")
    if not got["target"]:
        problems.append("the linked fork is not on the page")
    for f in got["forks"]:
        if not f["shown"] or not f["student"].strip():
            problems.append(f"{f['id']}: the student's chunk is not shown")
        if len(f["samples"]) != f["n"] or f["n"] < 1:
            problems.append(f"{f['id']}: {len(f['samples'])} teacher samples shown for N_eff {f['n']}")
        problems += [f"{f['id']}: a teacher sample without text or phi" for s in f["samples"] if not s["text"] or not s["phi"]]
    return problems


def main(argv: list[str]) -> int:
    """`URL PNG [HEIGHT]` triples, one per line of arguments separated by `--`; HEIGHT 0 = full page."""
    shots = [a.split() if isinstance(a, str) else a for a in " ".join(argv).split(" -- ")]
    if not argv or any(len(s) not in (2, 3) for s in shots):
        print("usage: python -m tests.browser URL PNG [HEIGHT] [-- URL PNG [HEIGHT] ...]", file=sys.stderr)
        return 2
    with chromium() as driver:
        for url, png, *h in shots:
            driver.get(url)
            print(full_page_screenshot(driver, png, height=int(h[0]) if h and int(h[0]) > 0 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
