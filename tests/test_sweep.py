"""ci/sweep.py's pure parts: the grid expanded as `dvc exp run -S` expands it, validated by the params schema before
anything runs, capped; and the sweep note's table, parsed as Markdown (markdown-it), not matched as text."""

from __future__ import annotations

import pytest
import yaml
from markdown_it import MarkdownIt

from ci.sweep import Row, SweepError, expand_grid, failure_reason, grid_lines, plan, render_note
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def labels(text: str) -> list[str]:
    return [experiment.label for experiment in expand_grid(grid_lines(text, "grid"))]


def test_each_line_is_every_combination_of_its_values_and_lines_add_up():
    grid = "# a comment\n-S xgb.max_depth=3,6 -S train.model=joint,per_protein\n\n--set-param params.yaml:xgb.subsample=0.5"
    assert labels(grid) == [
        "xgb.max_depth=3 train.model=joint",
        "xgb.max_depth=3 train.model=per_protein",
        "xgb.max_depth=6 train.model=joint",
        "xgb.max_depth=6 train.model=per_protein",
        "xgb.subsample=0.5",
    ]
    assert labels("-S featurize.descriptors=[MolWt,TPSA],[MolWt] ; -S xgb.max_depth=4") == [
        "featurize.descriptors=[MolWt,TPSA]",
        "featurize.descriptors=[MolWt]",
        "xgb.max_depth=4",
    ]


def test_valid_experiments_pass_with_their_values_read_as_yaml():
    experiments = plan(expand_grid(grid_lines("-S xgb.max_depth=3,6 -S train.negatives_per_positive=null", "g")),
                       PARAMS, cap=8)  # fmt: skip
    assert len(experiments) == 2 and experiments[0].set_params == [
        "-S", "xgb.max_depth=3", "-S", "train.negatives_per_positive=null",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("-S xgb.max_depth=3\n-S xgb.max_dept=3,4",
         "grid line 2: experiment 2 (xgb.max_dept=3) is invalid: xgb.max_dept: unknown key (allowed here: "
         "n_estimators, max_depth,"),
        ("-S train.model=joint,both", "grid line 1: experiment 2 (train.model=both) is invalid: train.model: "
         "Input should be 'joint' or 'per_protein' (got 'both')"),
        ("-S xgb.learning_rate=0", "experiment 1 (xgb.learning_rate=0) is invalid: xgb.learning_rate: Input should "
         "be greater than 0"),
        ("-S split.held_out_building_blocks=0.3 -S nonsense.key=1", "nonsense: unknown key"),
        ("xgb.max_depth=3", "grid line 1: expected `-S key=v1,v2` (as `dvc exp run` takes), got 'xgb.max_depth=3'"),
        ("-S other.yaml:xgb.max_depth=3", "with a key of params.yaml, got 'other.yaml:xgb.max_depth'"),
    ],
)  # fmt: skip
def test_a_bad_grid_fails_with_the_schemas_own_message(grid, message):
    with pytest.raises(SweepError) as error:
        plan(expand_grid(grid_lines(grid, "grid")), PARAMS, cap=8)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_more_experiments_than_the_cap_are_refused_before_any_check():
    grid = "-S xgb.max_depth=1,2,3 -S xgb.subsample=0.5,0.7,0.9"
    with pytest.raises(SweepError, match="the grid makes 9 experiments, more than SWEEP_MAX_EXPERIMENTS=8"):
        plan(expand_grid(grid_lines(grid, "grid")), PARAMS, cap=8)
    assert len(plan(expand_grid(grid_lines(grid, "grid")), PARAMS, cap=9)) == 9
    with pytest.raises(SweepError, match="no experiment"):
        plan(expand_grid(grid_lines("# nothing\n", "grid")), PARAMS, cap=8)


def params(depth: int, rate: float = 0.1) -> dict:
    return {"xgb": {"max_depth": depth, "learning_rate": rate, "n_estimators": 200}, "evaluate": {"seed": 0}}


def difference(score: tuple, share: tuple, non_share: tuple, common: int = 900, own: int = 900) -> dict:
    """A stages.compare result as the job stores it: (difference, low, high, better) per figure."""
    figures = {
        name: {"a": 0.5, "b": 0.5 + d, "difference": d, "interval": [low, high], "better": better}
        for name, (d, low, high, better) in (("score", score), ("share", share), ("non_share", non_share))
    }
    return {"a": "main", "b": "x", "rows_a": 900, "rows_b": own, "rows_common": common, "samples": 1000,
            "seed": 0, "figures": figures}  # fmt: skip


ROWS = [
    Row("mr3-p7-1", "experiment", params(4, 0.05), {"score": 0.41, "share": 0.7, "non_share": 0.12},
        {"score": [0.36, 0.47], "share": [0.62, 0.77], "non_share": [0.08, 0.19]},
        difference=difference((-0.06, -0.09, -0.03, "A"), (-0.05, -0.08, -0.01, "A"), (-0.07, -0.12, -0.02, "A"))),
    Row("main", "base", params(6), {"score": 0.47, "share": 0.75, "non_share": 0.19},
        {"score": [0.42, 0.53], "share": [0.67, 0.82], "non_share": [0.14, 0.28]}),
    Row("mr3-p7-2", "experiment", params(8, 0.05), failed="ERROR: failed to reproduce 'train': out of memory"),
    Row("mr3-p7-3", "experiment", params(8, 0.2), {"score": 0.49, "share": 0.76, "non_share": 0.22},
        {"score": [0.44, 0.55], "share": [0.69, 0.83], "non_share": [0.16, 0.30]},
        difference=difference((0.02, 0.005, 0.034, "B"), (0.01, -0.01, 0.03, "not distinguishable"),
                              (0.03, 0.01, 0.05, "B"), common=850, own=880)),
    Row("this MR", "merge request", params(6), {"score": 0.47, "share": 0.75, "non_share": 0.19},
        {"score": [0.42, 0.53], "share": [0.67, 0.82], "non_share": [0.14, 0.28]},
        difference=difference((0.0, 0.0, 0.0, "not distinguishable"), (0.0, 0.0, 0.0, "not distinguishable"),
                              (0.0, 0.0, 0.0, "not distinguishable"))),
]  # fmt: skip


def tables(markdown: str) -> list[list[list[str]]]:
    """Every table of a Markdown text as rows of cell texts (the head row first), through markdown-it's parser."""
    found, row, rows = [], None, None
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        if token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            rows.append(row)
            row = None
        elif token.type == "table_close":
            found.append(rows)
    return found


def test_the_note_table_has_the_base_first_then_the_runs_by_score_and_only_the_params_that_differ():
    note = render_note(ROWS, "main")
    runs, paired = tables(note)
    head, *body = runs
    assert len(head) <= 8
    assert head == ["experiment", "score [95%]", "share [95%]", "non_share [95%]", "Δ score vs `main`",
                    "`max_depth`", "`learning_rate`"]  # fmt: skip
    assert head[5:] == [
        "`max_depth`",
        "`learning_rate`",
    ]  # n_estimators and evaluate.seed: the same everywhere
    assert [cells[0] for cells in body] == ["main (base)", "mr3-p7-3", "this MR", "mr3-p7-1", "mr3-p7-2"]
    by_name = {cells[0]: cells for cells in body}
    assert by_name["main (base)"][1:5] == [
        "0.470 [0.420, 0.530]",
        "0.750 [0.670, 0.820]",
        "0.190 [0.140, 0.280]",
        "",
    ]
    assert by_name["mr3-p7-3"][1] == "0.490 [0.440, 0.550]"
    assert by_name["mr3-p7-3"][4] == "+0.020 [+0.005, +0.034] ▲"
    assert by_name["mr3-p7-1"][4] == "-0.060 [-0.090, -0.030] ▼"
    assert by_name["this MR"][4] == "+0.000 [+0.000, +0.000]"
    assert by_name["mr3-p7-2"][1:3] == ["failed", ""] and by_name["mr3-p7-2"][5:] == ["8", "0.05"]
    assert by_name["main (base)"][5:] == ["6", "0.1"]
    # the paired differences: every run with a comparison, score, share and non_share, the rows compared
    head, *body = paired
    assert head == ["run", "Δ score [95%]", "Δ share [95%]", "Δ non_share [95%]", "rows compared"]
    assert {cells[0]: cells[1:] for cells in body} == {
        "mr3-p7-3": ["+0.020 [+0.005, +0.034] ▲", "+0.010 [-0.010, +0.030]", "+0.030 [+0.010, +0.050] ▲", "850 of 880"],
        "this MR": ["+0.000 [+0.000, +0.000]"] * 3 + ["900"],
        "mr3-p7-1": ["-0.060 [-0.090, -0.030] ▼", "-0.050 [-0.080, -0.010] ▼", "-0.070 [-0.120, -0.020] ▼", "900"],
    }  # fmt: skip


def test_the_note_names_the_best_experiment_the_failures_and_how_to_apply():
    note = render_note(ROWS, "main")
    tokens = MarkdownIt("commonmark").parse(note)
    paragraphs = [t for t in tokens if t.type == "inline" and t.content.startswith(("**Best", "**Failed"))]
    best, failed = sorted(paragraphs, key=lambda t: t.content)
    codes = [child.content for child in best.children if child.type == "code_inline"]
    assert codes == ["mr3-p7-3", "dvc exp pull --remote mr origin mr3-p7-3 && dvc exp apply mr3-p7-3"]
    assert "mr3-p7-2: ERROR: failed to reproduce 'train': out of memory" in failed.content


def test_more_than_three_differing_params_share_one_column():
    rows = [Row("main", "base", {"a": {"w": 1, "x": 1, "y": 1, "z": 1}}, {"score": 0.5}),
            Row("e1", "experiment", {"a": {"w": 2, "x": 2, "y": 2, "z": 2}}, {"score": 0.6})]  # fmt: skip
    (head, _base, e1), *_ = tables(render_note(rows, "main"))
    assert len(head) == 6 and head[5] == "params"
    assert e1[5] == "w=2, x=2, y=2, z=2"


def test_a_failed_experiment_is_reported_by_its_error_line():
    stdout = "Reproducing experiment 'mr3-p7-2'\nRunning stage 'train':\n> python -m stages.train ...\n"
    stderr = ("error: train: the in-memory fit needs about 9.1 GB, more than the 4.0 GB available\n"
              "ERROR: failed to reproduce 'train': failed to run: python -m stages.train ..., exited with 1\n")  # fmt: skip
    assert failure_reason(stdout, stderr) == (
        "error: train: the in-memory fit needs about 9.1 GB, more than the 4.0 GB available"
    )  # the stage's own line, not dvc's
    assert failure_reason("", stderr.splitlines()[1]).startswith("ERROR: failed to reproduce 'train'")
    assert failure_reason("only this\n", "") == "only this"
    assert failure_reason("", "") == "no output"
