"""The report and the fork inspector in a real browser (headless Debian Chromium, tests/browser.py).

Pages are opened from file:// (no server), screenshots taken, and what rendered is read from
the DOM. The last test breaks a copy of the report (one plot's image, the fork table) and
checks that the same checks then fail, so this test cannot pass on a page that lost them.
A missing browser is a failure, not a skip: `make test` installs it (`make browser`).
"""

from __future__ import annotations

import re

import pytest

from omniopd.report import build_report
from omniopd.run_data import RunData
from tests import browser
from tests.report_run import tiny_run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    why = browser.missing_browser()
    if why:
        pytest.fail(why)
    run_dir = tiny_run(tmp_path_factory)
    with RunData.open(run_dir) as data:
        result = build_report(data, run_dir / "report")
        steps = data.steps()
    return result, steps


def test_report_and_inspector_render_in_chromium(report, tmp_path):
    result, steps = report
    with browser.chromium() as driver:
        driver.get(result.index.as_uri())
        assert driver.title.startswith("omniopd report")
        assert browser.report_problems(driver, steps, (*browser.PLOTS, "eval")) == []
        assert browser.full_page_screenshot(driver, tmp_path / "report.png").stat().st_size > 10_000
        # follow the first fork's link, as a reader would
        link = driver.find_element("css selector", "#fork-table tr.fork-row a")
        link.click()
        assert re.search(r"/inspect/step-\d+-completion-\d+\.html#fork-\d+$", driver.current_url)
        assert browser.inspector_problems(driver) == []
        assert browser.full_page_screenshot(driver, tmp_path / "inspect.png").stat().st_size > 10_000
        n_pages = 0
        for page in result.inspect_pages:
            driver.get(page.as_uri())
            assert browser.inspector_problems(driver) == [], page.name
            n_pages += 1
        assert n_pages == len(result.inspect_pages) >= 1


def test_the_checks_fail_on_a_page_missing_a_plot_or_the_fork_table(report, tmp_path):
    result, steps = report
    html = result.index.read_text()
    broken = re.sub(r'(<figure id="plot-kl"><img class="plot" alt="[^"]*" src=")data:image/png;base64,[^"]+', r"\1data:image/png;base64,AAAA", html)
    assert broken != html
    broken = re.sub(r'<table id="fork-table">.*?</table>', "", broken, flags=re.S)
    page = result.index.with_name("broken.html")
    page.write_text(broken)
    with browser.chromium() as driver:
        driver.get(page.as_uri())
        problems = browser.report_problems(driver, steps)
    assert any(p.startswith("plot kl: the image did not load") for p in problems), problems
    assert "fork table: no rows rendered" in problems
