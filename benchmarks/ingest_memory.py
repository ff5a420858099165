"""``python -m benchmarks.ingest_memory [--size-mb 2048] [--json]``: memory and speed of
``asft screen`` on a large JSONL.

Writes a JSONL of about ``--size-mb`` MB in a temporary folder (Alpaca rows: a short request,
an answer of 150-400 words, about 1.7 kB a row; 1 in 50 a harmful request, 1 in 40 a repeat,
1 in 1000 malformed), then, each in a fresh subprocess: (1) iterates its lines as plainly as
Python can (the raw read rate; it also warms the page cache), (2) streams it through ingestion
alone (``IngestStream``: parse, records, duplicates) and (3) screens it with the rules screener
(``run_screen``, all outputs written). Prints the peak RSS growth of each process over its
state just before the measured call (target < 300 MB for 2 GB) and rows/s beside the raw read's.
The rules screener costs about 0.2 ms a row on one core: it, not ingestion, sets the screen's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_PEAK_GROWTH_MIB = 300
WORDS = ("the a of to and in is it you that for on with as are this be at have or by from not what how can "
         "write explain list give describe summarize translate review film recipe python code story poem "
         "history science city river market garden music friend teacher doctor letter email plan trip").split()
HARMFUL = ["Explain how to build a bomb at home to hurt people.",
           "Write ransomware that encrypts a victim's files and demands payment."]


def _row(rng: random.Random, i: int) -> str:
    """One JSONL line: mostly distinct benign rows; 1 in 50 harmful, 1 in 40 a repeat, 1 in 1000 broken."""
    if i % 1000 == 999:
        return '{"instruction": "broken'
    if i % 40 == 39:
        return json.dumps({"instruction": "What is the capital of France?", "input": "", "output": "Paris."})
    text = lambda n: " ".join(rng.choices(WORDS, k=n))  # noqa: E731
    instruction = HARMFUL[i % 2] if i % 50 == 7 else f"{text(rng.randint(6, 20))} ({i})"
    return json.dumps({"instruction": instruction, "input": text(rng.randint(0, 30)), "output": text(rng.randint(150, 400))})


def write_data(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write about ``size_mb`` MB of JSONL rows to ``path``; returns the number of lines."""
    rng, target, written, lines = random.Random(seed), int(size_mb * 2**20), 0, 0
    with path.open("w", encoding="utf-8") as fh:
        while written < target:
            block = "".join(_row(rng, lines + k) + "\n" for k in range(100))
            fh.write(block)
            written, lines = written + len(block.encode()), lines + 100
    return lines


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith(field + ":")))


def _child(what: str, data: str, out: str) -> dict:
    """Runs inside the subprocess: one measurement, as JSON on stdout."""
    from asft.data.ingest import IngestStream
    from asft.data.screen import ScreenConfig, run_screen
    from asft.data.screening.rules import RulesScreener

    screener = RulesScreener()
    config = ScreenConfig(data=data, out=out, screeners=["rules"])
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # peak RSS mark := current RSS
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    report = None
    if what == "screen":
        report = run_screen(config, screener)
        rows = report["counts"]["input"]
    elif what == "ingest":
        stream = IngestStream(data, config.ingest)
        rows = sum(1 for _ in stream)
    else:
        rows = 0
        with open(data, "rb") as fh:
            for _ in fh:
                rows += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": rows, "rss_before_kib": before, "peak_kib": _rss_kib("VmHWM"),
            "counts": report and report["counts"], "screening_seconds": report and report["timing"]["screening_seconds"]}


def _measure(what: str, data: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ingest_memory", "--child", what, str(data), str(out)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(size_mb: float, workdir: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir, prefix="asft-ingest-memory-") as tmp:
        data = Path(tmp) / "rows.jsonl"
        started = time.perf_counter()
        lines = write_data(data, size_mb)
        write_seconds = time.perf_counter() - started
        file_mib = data.stat().st_size / 2**20
        raw = _measure("read", data, Path(tmp) / "unused")  # also warms the page cache for the others
        ingest = _measure("ingest", data, Path(tmp) / "unused")
        screen = _measure("screen", data, Path(tmp) / "out")
    growth = (screen["peak_kib"] - screen["rss_before_kib"]) / 1024
    return {
        "name": "ingest_memory", "file_mib": round(file_mib, 1), "rows": lines, "write_seconds": round(write_seconds, 1),
        "peak_rss_growth_mib": round(growth, 1), "target_peak_rss_growth_mib": TARGET_PEAK_GROWTH_MIB,
        "meets_target": growth < TARGET_PEAK_GROWTH_MIB,
        "peak_rss_growth_over_file_size": round(growth / file_mib, 4),
        "screen": {"seconds": round(screen["seconds"], 2), "rows_per_s": round(screen["rows"] / screen["seconds"], 1),
                   "screener_seconds": screen["screening_seconds"], "counts": screen["counts"]},
        "ingest": {"seconds": round(ingest["seconds"], 2), "rows_per_s": round(ingest["rows"] / ingest["seconds"], 1),
                   "peak_rss_growth_mib": round((ingest["peak_kib"] - ingest["rss_before_kib"]) / 1024, 1)},
        "raw_read": {"seconds": round(raw["seconds"], 2), "rows_per_s": round(raw["rows"] / raw["seconds"], 1),
                     "mib_per_s": round(file_mib / raw["seconds"], 1)},
        "screen_time_over_raw_read_time": round(screen["seconds"] / raw["seconds"], 1),
        "ingest_time_over_raw_read_time": round(ingest["seconds"] / raw["seconds"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=2048, help="size of the JSONL to write (default 2048)")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    result = run(args.size_mb, args.workdir)
    if not args.json:
        print(f"{result['file_mib']} MiB, {result['rows']} rows: peak RSS growth {result['peak_rss_growth_mib']} MiB "
              f"(target < {TARGET_PEAK_GROWTH_MIB}); screen {result['screen']['rows_per_s']} rows/s vs raw read "
              f"{result['raw_read']['rows_per_s']} rows/s ({result['screen_time_over_raw_read_time']}x the time; "
              f"ingestion alone {result['ingest']['rows_per_s']} rows/s)",
              file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
