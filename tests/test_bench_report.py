"""bench/report.py: the step from bench/bench.py's results to Markdown is pure, and its text is pinned on a fixture
(the JSON of a small `bench/bench.py run`), so a change of the report's format shows here, without a benchmark.
After a deliberate change: `python bench/bench.py report tests/golden/bench-results.json > tests/golden/bench-report.md`
(the file holds the printed text, a newline at the end)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from bench.report import report

GOLDEN = Path(__file__).with_name("golden")
RESULTS = json.loads((GOLDEN / "bench-results.json").read_text())


def test_report_of_the_fixture_is_pinned():
    assert report(RESULTS) + "\n" == (GOLDEN / "bench-report.md").read_text()


def test_report_is_its_results_alone():
    """No clock, machine or file is read: the same results give the same text, and the results are left as they
    were."""
    before = copy.deepcopy(RESULTS)
    assert report(RESULTS) == report(copy.deepcopy(RESULTS))
    assert before == RESULTS
    moved = RESULTS | {"date": "2000-01-02", "ram_bytes": 7e9, "cores": 4}
    text = report(moved)
    assert "on 4 cores (7 GB RAM), 2000-01-02." in text


def test_sections_follow_what_was_measured():
    text = report(RESULTS)
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert [h.split(" (")[0] for h in headings] == [
        "Baselines",
        "Featurize",
        "Appending 10% new rows",
        "Train",
        "Train against the in-memory limit",
        "Targets",
        "Projection to BELKA's 295,246,830 rows",
    ]
    # a run that neither appended nor trained has neither section, nor their targets
    bare = copy.deepcopy(RESULTS)
    for run in bare["runs"].values():
        for key in ("append", "train", "limit"):
            run.pop(key, None)
    text = report(bare)
    assert "## Appending" not in text and "## Train" not in text
    assert "append 10% to" not in text and "train peak RSS" not in text
    assert "## Targets" in text and "## Projection" in text
