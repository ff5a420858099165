"""``python -m benchmarks [--quick | --tiny] [--json] [--device cpu|cuda] [--sandbox DIR] [--only a,b]``

Runs every benchmark in this process (extraction measures in subprocesses) and prints one
JSON object: environment, then each benchmark's ratio with its shapes, dtype, device and
repeat counts. Full mode (default) uses 7B module shapes where the device allows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
import traceback

BENCHMARKS = ("step", "penalty", "memory", "extraction", "generation")


def environment(device) -> dict:
    import peft
    import torch
    import transformers

    from benchmarks.timing import device_name

    return {"date": datetime.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark command shares: ``--quick | --tiny``, ``--json``, ``--device``."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller shapes, a few minutes on 2 CPU cores")
    size.add_argument("--tiny", action="store_true", help="tiny shapes: checks the code runs (tests), figures meaningless")
    parser.add_argument("--json", action="store_true", help="print the JSON only")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_size_arguments(parser)
    parser.add_argument("--sandbox", default=None, help="a built sandbox folder for the generation benchmark")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    import torch

    from asft.modeling import pick_device
    from benchmarks import extraction, generation, memory, penalty, step

    device = pick_device(args.device)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    wanted = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark {unknown[0]}; choose from {','.join(BENCHMARKS)}")
    runners = {"step": lambda: step.run(mode, device), "penalty": lambda: penalty.run(mode, device),
               "memory": lambda: memory.run(mode, device), "extraction": lambda: extraction.run(mode, device),
               "generation": lambda: generation.run(mode, device, sandbox=args.sandbox)}
    report = {"mode": mode, "environment": environment(device), "results": {}, "errors": {}}
    for name in wanted:
        print(f"[benchmarks] {name} ({mode}, {device}) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            record = runners[name]()
        except Exception as exc:  # one failing benchmark must not hide the others' figures
            traceback.print_exc(file=sys.stderr)
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            continue
        record["wall_s"] = round(time.perf_counter() - started, 1)
        report["results"][record.pop("name")] = record
        print(f"[benchmarks] {name}: ratio {record['ratio']} in {record['wall_s']} s", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["ratios"] = {k: v["ratio"] for k, v in report["results"].items()}
    for key, extras in (("extract_peak_rss_over_largest_tensor",
                         ("extract_time_over_read_time", "extract_with_checkpoint_hashing_over_read_time")),):
        if key in report["results"]:
            report["ratios"].update({extra: report["results"][key][extra] for extra in extras})
    text = json.dumps(report, indent=None if args.json else 2)
    if args.out:
        from asft import storage

        storage.write_text(args.out, text + "\n")
    print(text)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
