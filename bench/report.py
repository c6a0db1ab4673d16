"""bench/bench.py's report: its results (the JSON ``bench/bench.py run`` writes) to Markdown. Pure: the same
results give the same text, whatever the machine or the day (``tests/test_bench_report.py`` checks it on a
fixture). ``python bench/bench.py report RESULTS.json`` prints it."""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import BELKA_MOLECULES, BELKA_ROWS, GB, count, human, markdown_table, metric


def limit_section(runs: dict, sizes: list[int]) -> list[str]:
    """Train's process against the same rows and features given to XGBoost as one in-memory numpy array."""
    lines = [
        "## Train against the in-memory limit",
        "",
        "The limit is the same training done the simplest way XGBoost allows when everything fits in memory: "
        "the same split rows after the same negative sampling, the encoder and scaler fitted by the same "
        "`stages.train.fit_preprocessing`, the whole design matrix built once by `stages.model.design_matrix` "
        "as one float32 numpy array (train and the sampled valid part), given straight to "
        "`xgboost.QuantileDMatrix(X, label, weight, max_bin)` (no `DataIter`, no batches; the arrays are "
        "freed once quantised), then `xgboost.train` with the booster params of "
        "`XGBClassifier(**xgb).get_xgb_params()`, the same rounds and the same per-round evals on train and "
        "valid, and the model saved with `stages.model.save_model`. Both run as their own process (`bench.py "
        "limit`); seconds are the process's wall clock (start-up and imports included), peak RSS is sampled "
        "like the stages'. `time x` and `RSS x` are train / limit; `start-up s` is the limit's wall clock outside its timed phases "
        "(interpreter start, imports, reading params, exit); `time x less start-up` subtracts it from both (both "
        "import `stages.train`, so train's is about the same). `CPU s` is the CPU time of the process tree, which other jobs' load distorts less "
        "than wall time. With `--train-repeats` N > 1, train and the limit ran N times each, alternated: the "
        "fastest run of each is shown (every run's seconds below the table) with the highest peak RSS of its runs.",
        "",
    ]
    rows = []
    for size in sizes:
        r, t, lim = runs[size], runs[size]["train"], runs[size]["limit"]
        ph = lim["phases"]
        same = "yes" if t["train_rows"] == lim["rows"] else f"**no** ({count(t['train_rows'])})"
        startup = lim["seconds"] - sum(ph.values())  # start-up, imports and exit: all but the timed phases
        compute_ratio = (t["seconds"] - startup) / max(lim["seconds"] - startup, 1e-9)
        rows.append(
            [f"{r['rows']:,}", f"{lim['rows']:,}", same, f"{lim['features']:,}", str(t["trees"]),
             f"{t['seconds']:.1f}", f"{lim['seconds']:.1f}", f"{t['seconds'] / lim['seconds']:.2f}x",
             f"{startup:.1f}", f"{compute_ratio:.2f}x", f"{t['cpu_seconds']:.0f} / {lim['cpu_seconds']:.0f}",
             f"{t['cpu_seconds'] / lim['cpu_seconds']:.2f}x",
             f"{t['peak_rss'] / GB:.2f} GB", f"{lim['peak_rss'] / GB:.2f} GB",
             f"{t['peak_rss'] / lim['peak_rss']:.2f}x", f"{lim['matrix_bytes'] / GB:.2f} GB",
             f"{ph['rows']:.1f} / {ph['matrix']:.1f} / {ph['dmatrix']:.1f} / {ph['boost']:.1f}",
             f"{t['load']:.1f} / {lim['load']:.1f}"]
        )  # fmt: skip
    lines += markdown_table(
        ["input rows", "train rows (limit)", "same rows in train", "features", "rounds", "train s", "limit s",
         "time x", "start-up s", "time x less start-up", "CPU s (train / limit)", "CPU x", "train peak RSS", "limit peak RSS", "RSS x", "limit's float32 arrays",
         "limit phases s: rows+fit / matrix / quantise / boost", "load"],
        rows,
    )  # fmt: skip
    repeated = [size for size in sizes if len(runs[size]["train"].get("all_seconds", [])) > 1]
    if repeated:
        lines.append("")
    for size in repeated:
        t, lim = runs[size]["train"], runs[size]["limit"]
        lines.append(
            f"- {human(runs[size]['rows'])} rows, seconds of each run: train "
            f"{', '.join(f'{x:.1f}' for x in t['all_seconds'])}; limit "
            f"{', '.join(f'{x:.1f}' for x in lim['all_seconds'])}"
        )
    lines += [
        "",
        "Agreement: both models score every valid row (unsampled, unweighted), each through its own encoder and "
        "scaler; the two are built differently (batched vs one-array quantile sketch), so their trees are not "
        "byte-equal and small metric differences are expected.",
        "",
    ]
    rows = []
    for size in sizes:
        a = runs[size]["limit"]["agree"]
        p, lim = a["pipeline"], a["limit"]
        auc_diff = "n/a" if p["roc_auc"] is None else f"{abs(p['roc_auc'] - lim['roc_auc']):.4f}"
        rows.append(
            [f"{runs[size]['rows']:,}", f"{a['valid_rows']:,}", f"{a['positives']:,}",
             f"{p['trees']} / {lim['trees']}", f"{metric(p['roc_auc'])} / {metric(lim['roc_auc'])}", auc_diff,
             f"{metric(p['ap'])} / {metric(lim['ap'])}", f"{a['mean_abs_diff']:.1e}", f"{a['max_abs_diff']:.1e}"]
        )  # fmt: skip
    lines += markdown_table(
        ["input rows", "valid rows", "positives", "trees (train / limit)", "ROC AUC (train / limit)",
         "AUC abs diff", "AP (train / limit)",
         "mean abs prob diff", "max abs prob diff"],
        rows,
    )  # fmt: skip
    return lines


FEATURIZE_COLUMNS = ["seconds", "rows/s", "vs default ceiling", "vs fast ceiling", "CPU s (tree)",
                     "per CPU-s vs fast ceiling", "load", "peak RSS (tree)"]  # fmt: skip


def featurize_cells(rows: int, run: dict, ceiling_rows: dict[str, float], fast_cpu_rows: float) -> list[str]:
    """A featurize run's figures (``FEATURIZE_COLUMNS``): ``ceiling_rows`` are the all-core rows/s of the default
    and fast ceilings, ``fast_cpu_rows`` the fast ceiling's rows per CPU second of one core."""
    rate = rows / run["seconds"]
    return [f"{run['seconds']:.1f}", f"{rate:,.0f}", f"{rate / ceiling_rows['default']:.2f}",
            f"{rate / ceiling_rows['fast']:.2f}", f"{run['cpu_seconds']:.0f}",
            f"{rows / run['cpu_seconds'] / fast_cpu_rows:.2f}", f"{run['load']:.1f}",
            f"{run['peak_rss'] / GB:.2f} GB"]  # fmt: skip


def all_core_rows(ceilings: dict[str, dict], rows_per_molecule: float, cores: int) -> dict[str, float]:
    """Each ceiling's rows/s on every core: its one-core molecules/s x rows a molecule x cores."""
    return {name: c["molecules_per_s"] * rows_per_molecule * cores for name, c in ceilings.items()}


def ceiling_line(
    name: str, what: str, ceiling: dict, cores: int, rows_per_molecule: float, rows: float
) -> str:
    """A ceiling's line in the report; ``rows``: its all-core rows/s (:func:`all_core_rows`)."""
    return (
        f"- {name}: `chem.featurize_smiles` with {what} on {ceiling['molecules']:,} unique cleaned SMILES in a "
        f"plain loop: {ceiling['molecules_per_s']:,.0f} molecules/s on one core "
        f"({1e6 / ceiling['molecules_per_s']:,.0f} us a molecule); x {cores} cores x {rows_per_molecule:.0f} rows "
        f"a molecule = **{rows:,.0f} rows/s** ({ceiling['molecules_per_cpu_s']:,.0f} molecules per CPU second)."
    )


@dataclass(frozen=True)
class Run:
    """A benchmark's results with what every section derives from them."""

    results: dict
    runs: dict[int, dict]  # input rows -> that size's measurements
    sizes: list[int]
    rows_per_molecule: float
    per_s: dict[str, float]  # each ceiling's all-core rows/s
    ceiling_cpu_rows: float  # the fast ceiling's rows per CPU second of one core

    @classmethod
    def of(cls, results: dict) -> Run:
        runs = {int(size): run for size, run in results["runs"].items()}
        sizes = sorted(runs)
        small = runs[sizes[0]]
        rows_per_molecule = small["rows"] / small["molecules"]
        ceilings = results["ceilings"]
        return cls(
            results,
            runs,
            sizes,
            rows_per_molecule,
            all_core_rows(ceilings, rows_per_molecule, results["cores"]),
            ceilings["fast"]["molecules_per_cpu_s"] * rows_per_molecule,
        )

    @property
    def cores(self) -> int:
        return self.results["cores"]

    @property
    def small(self) -> dict:
        return self.runs[self.sizes[0]]

    @property
    def large(self) -> dict:
        return self.runs[self.sizes[-1]]

    def having(self, key: str) -> list[int]:
        return [size for size in self.sizes if key in self.runs[size]]


def header(run: Run) -> list[str]:
    r, naive_r = run.results, run.results["naive"]
    ceiling_r, fast_r = r["ceilings"]["default"], r["ceilings"]["fast"]
    return [
        "# Benchmark: featurize and train at BELKA scale",
        "",
        f"Written by `python bench/bench.py run --sizes {','.join(human(s) for s in run.sizes)}` on {run.cores} cores "
        f"({r['ram_bytes'] / GB:.0f} GB RAM), {r['date']}. Inputs from "
        f"`bench/belka_gen.py`: BELKA's format, {run.rows_per_molecule:.0f} adjacent rows (BRD4, HSA, sEH) per "
        f"molecule; featurize.batch_rows={r['batch_rows']:,}, Morgan {r['n_bits']} bits, a fresh feature cache per "
        "size. Peak RSS is the sum over the process tree (the stage and its pool workers) sampled every 0.2 s.",
        "",
        "## Baselines (on the smallest input)",
        "",
        f"- naive: polars `map_elements` calling RDKit per row, one process, every row parsed: "
        f"**{naive_r['rows_per_s']:,.0f} rows/s** (timed on the first {naive_r['rows']:,} rows; "
        f"{naive_r['rows'] / naive_r['compute_cpu']:,.0f} rows per CPU second).",
        ceiling_line(
            "RDKit ceiling, default parse",
            "`Chem.MolFromSmiles` (`fast=False`)",
            ceiling_r,
            run.cores,
            run.rows_per_molecule,
            run.per_s["default"],
        ),
        ceiling_line(
            "RDKit ceiling, fast parse",
            "`chem.parse`",
            fast_r,
            run.cores,
            run.rows_per_molecule,
            run.per_s["fast"],
        ),
        f"- The two alternate chunk by chunk in one process: the fast parse makes `featurize_smiles` "
        f"{fast_r['molecules_per_s'] / ceiling_r['molecules_per_s']:.2f}x faster.",
        "",
    ]


def featurize_section(run: Run) -> list[str]:
    lines = [
        "## Featurize",
        "",
        "`vs default ceiling` and `vs fast ceiling` compare wall-clock rows/s with each all-core ceiling's; "
        "`per CPU-s vs fast ceiling` compares rows per CPU second of the whole process tree with the fast "
        "ceiling's rows per CPU second of one core, which other jobs on the machine do not distort (`load`: the "
        f"machine's mean 1-minute load average during the run; {run.cores} means the cores were exactly busy).",
        "",
    ]
    rows = []
    for size in run.sizes:
        r, f = run.runs[size], run.runs[size]["featurize"]
        cells = featurize_cells(r["rows"], f, run.per_s, run.ceiling_cpu_rows)
        rate = r["rows"] / f["seconds"]
        rows.append(
            [
                f"{r['rows']:,}",
                f"{r['molecules']:,}",
                *cells,
                f"{rate / run.results['naive']['rows_per_s']:.1f}x",
            ]
        )
    return lines + markdown_table(["rows", "molecules", *FEATURIZE_COLUMNS, "vs naive"], rows)


def append_section(run: Run) -> list[str]:
    appended = run.having("append")
    if not appended:
        return []
    lines = [
        "",
        f"## Appending {run.results['append_fraction']:.0%} new rows (feature cache of the full run present, fresh "
        "output)",
        "",
    ]
    rows = []
    for size in appended:
        r, a = run.runs[size], run.runs[size]["append"]
        cost = a["seconds"] / r["featurize"]["seconds"]
        log_tail = a["log"].split(": ", 1)[-1]
        rows.append(
            [f"{r['rows']:,}", f"{a['rows']:,}", f"{a['seconds']:.1f}", f"{cost:.2f}",
             f"{a['peak_rss'] / GB:.2f} GB", log_tail]
        )  # fmt: skip
    return lines + markdown_table(
        ["rows before", "rows after", "seconds", "vs full run", "peak RSS", "featurize's log"],
        rows,
        text_columns=1,
    )


def train_section(run: Run) -> list[str]:
    trained = run.having("train")
    if not trained:
        return []
    lines = [
        "",
        f"## Train (train.negative_sample_rate={run.results['negative_sample_rate']}, split.valid_fraction from "
        "params, QuantileDMatrix in memory)",
        "",
    ]
    rows = []
    for size in trained:
        r, t = run.runs[size], run.runs[size]["train"]
        rows.append(
            [f"{r['rows']:,}", count(t["train_rows"]), str(t["trees"]), f"{t['seconds']:.1f}",
             f"{t['cpu_seconds']:.0f}", f"{t['load']:.1f}", f"{t['peak_rss'] / GB:.2f} GB"]
        )  # fmt: skip
    lines += markdown_table(
        ["input rows", "sampled train rows", "trees", "seconds", "CPU s", "load", "peak RSS (tree)"], rows
    )
    limited = [size for size in trained if "limit" in run.runs[size]]
    return lines + (["", *limit_section(run.runs, limited)] if limited else [])


def targets(run: Run) -> list[list[str]]:
    """Each target: what it asks, the measured figure, and whether it was met."""
    large, small, cores = run.large, run.small, run.cores
    fraction = run.results["append_fraction"]
    large_rate = large["rows"] / large["featurize"]["seconds"]
    out: list[list[str]] = []

    def target(name: str, measured: str, met: bool) -> None:
        out.append([name, measured, "yes" if met else "**no**"])

    ratio = large_rate / run.per_s["fast"]
    target(
        f"featurize rows/s >= 0.8 x fast ceiling ({human(large['rows'])} rows)", f"{ratio:.2f}", ratio >= 0.8
    )
    old = large_rate / run.per_s["default"]
    target("featurize rows/s >= 1.3 x default-parse ceiling", f"{old:.2f}", old >= 1.3)
    cpu_ratio = large["rows"] / large["featurize"]["cpu_seconds"] / run.ceiling_cpu_rows
    target("... the same per CPU second (contention-free)", f"{cpu_ratio:.2f}", cpu_ratio >= 0.8)
    speedup = large_rate / run.results["naive"]["rows_per_s"]
    target("featurize vs naive (about 5x on 2 cores)", f"{speedup:.1f}x", speedup >= 2.5 * cores * 0.8)
    if len(run.sizes) > 1:
        rss_ratio = large["featurize"]["peak_rss"] / small["featurize"]["peak_rss"]
        target(
            f"peak RSS at {human(large['rows'])} <= 1.5 x at {human(small['rows'])}",
            f"{rss_ratio:.2f} ({large['featurize']['peak_rss'] / GB:.2f} / "
            f"{small['featurize']['peak_rss'] / GB:.2f} GB)",
            rss_ratio <= 1.5,
        )
    peak = large["featurize"]["peak_rss"]
    target(f"peak RSS at {human(large['rows'])} < 4 GB", f"{peak / GB:.2f} GB", peak < 4 * GB)
    for size in run.having("append"):
        cost = run.runs[size]["append"]["seconds"] / run.runs[size]["featurize"]["seconds"]
        target(f"append {fraction:.0%} to {human(size)} <= 0.2 x full run", f"{cost:.2f}", cost <= 0.2)
    trained = run.having("train")
    if len(trained) > 1:
        t0, t1 = run.runs[trained[0]], run.runs[trained[-1]]
        rss_growth = t1["train"]["peak_rss"] / t0["train"]["peak_rss"]
        input_growth = t1["rows"] / t0["rows"]
        target(
            "train peak RSS grows slower than its input",
            f"RSS x{rss_growth:.2f} for input x{input_growth:.1f}",
            rss_growth < input_growth,
        )
    return out


def projection(run: Run) -> list[str]:
    large, small, cores, r = run.large, run.small, run.cores, run.results
    n_bits, rate = r["n_bits"], r["negative_sample_rate"]
    large_rate = large["rows"] / large["featurize"]["seconds"]
    per_core = large_rate / cores
    fp_bytes = n_bits // 8
    sampled = (0.0054 + rate) * BELKA_ROWS * 0.7
    peak = large["featurize"]["peak_rss"]
    growth = (peak - small["featurize"]["peak_rss"]) / max(large["molecules"] - small["molecules"], 1)
    return [
        "",
        f"## Projection to BELKA's {BELKA_ROWS:,} rows ({BELKA_MOLECULES:,} molecules)",
        "",
        f"- featurize at {large_rate:,.0f} rows/s ({per_core:,.0f} rows/s a core): "
        f"{BELKA_ROWS / large_rate / 3600:.1f} h on these {cores} cores, "
        f"{BELKA_ROWS / per_core / 16 / 3600:.1f} h on 16 cores, {BELKA_ROWS / per_core / 32 / 3600:.1f} h on 32 "
        "(linear in cores: the pipeline keeps every worker busy, but more than 2 cores were not measured).",
        f"- featurize memory: a batch of {r['batch_rows']:,} rows and the pool are fixed; what grows is the set of "
        f"molecules seen (16 B each, key and check hash: {BELKA_MOLECULES * 16 / GB:.2f} GB) and the "
        f"feature-cache index (16 B each, key, part and row: {BELKA_MOLECULES * 16 / GB:.2f} GB, only when the "
        f"cache holds them). Measured growth of peak RSS: {growth:.0f} B per extra molecule.",
        f"- features on disk: {BELKA_MOLECULES / 1e6:.0f}M molecules x {n_bits} bits packed = {fp_bytes} B each "
        f"= {BELKA_MOLECULES * fp_bytes / GB:.0f} GB (at 2048 bits: 256 B each = "
        f"{BELKA_MOLECULES * 256 / GB:.0f} GB), against {BELKA_ROWS * 2048 / GB:.0f} GB for one byte per bit per "
        f"row at 2048 bits ({BELKA_ROWS * n_bits / GB:.0f} GB at {n_bits}).",
        "- train: XGBoost's quantised matrix holds about 1 byte per feature value of the (sampled) train rows: "
        f"at negative_sample_rate={rate}, about {sampled / 1e6:.0f}M rows x "
        f"{n_bits + 6} features = {sampled * (n_bits + 6) / GB:.0f} GB in memory; train.data_mode=external pages "
        "it to disk instead.",
        "",
    ]


def report(results: dict) -> str:
    """The Markdown report of one ``bench/bench.py run``."""
    run = Run.of(results)
    lines = [*header(run), *featurize_section(run), *append_section(run), *train_section(run)]
    lines += [
        "",
        "## Targets",
        "",
        *markdown_table(["target", "measured", "met"], targets(run), text_columns=3),
    ]
    return "\n".join(lines + projection(run))
