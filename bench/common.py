"""What the benchmark scripts share: sizes and their names, BELKA's size, measuring a process tree's time and peak
memory, Markdown tables, and publishing a report. No benchmark runs from here."""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

BELKA_ROWS = 295_246_830
BELKA_MOLECULES = 98_415_610
GB = 1e9


def publish(text: str, results: Path | None) -> None:
    """Print a benchmark's report, and write it to ``results`` when given."""
    print(text)
    if results:
        results.write_text(text)


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def human(n: float) -> str:
    n = float(f"{n:.2g}")  # 999,999 rows (333,333 molecules) reads as 1M
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:.0f}"


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self.cpu: dict[int, float] = {}  # last CPU seconds seen per process of the tree
        self.load: list[float] = []  # the machine's 1-minute load average: other jobs show here
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            self.sample(procs)
            self.stop.wait(self.every)

    def sample(self, procs: list[psutil.Process]) -> None:
        """One sample of the tree's processes."""
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied), proc.oneshot():
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self.cpu[proc.pid] = times.user + times.system
        self.peak = max(self.peak, total)
        self.load.append(os.getloadavg()[0])

    def __enter__(self) -> TreeRss:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_measured(args: list[str], log_path: Path, root: Path = ROOT) -> dict:
    """Run a command in ``root`` (the project's code: this checkout, or another commit's tree); return wall seconds
    and the peak RSS of its process tree. Fails loudly on a non-zero exit."""
    env = {**os.environ, "BELKA_PROGRESS": "1", "PYTHONPATH": str(root)}
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeRss(proc.pid) as rss:
            code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}); see {log_path}:\n{log_path.read_text()[-3000:]}")
    load = sum(rss.load) / len(rss.load) if rss.load else os.getloadavg()[0]
    return {"seconds": seconds, "peak_rss": rss.peak, "cpu_seconds": sum(rss.cpu.values()), "load": load}


def timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """``work()``'s result, its wall-clock seconds and this process's CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - start, time.process_time() - cpu


def fastest(runs: list[dict]) -> dict:
    """The fastest of repeated measurements, with every run's seconds and the highest peak RSS of them all."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["all_seconds"] = [r["seconds"] for r in runs]
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    return best


def markdown_table(
    columns: list[str], rows: list[list[str]], text_columns: int = 0, leading_text: int = 0
) -> list[str]:
    """A markdown table: numbers right-aligned, the first ``leading_text`` and the last ``text_columns`` columns
    left-aligned."""
    numeric = len(columns) - text_columns - leading_text
    rule = ["---"] * leading_text + ["---:"] * numeric + ["---"] * text_columns
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(rule) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def definitions_at(ref: str, path: str, names: set[str], namespace: dict) -> dict:
    """The module-level classes and functions ``names`` of ``path`` at commit ``ref``, compiled alone into
    ``namespace`` (which provides what they use: numpy, helpers), for a benchmark against an earlier commit."""
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    tree = ast.parse(source)
    parts = [
        ast.get_source_segment(source, node)
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in names
    ]
    code = compile("from __future__ import annotations\n" + "\n\n".join(parts), f"{ref}:{path}", "exec")
    exec(code, namespace)
    return namespace
