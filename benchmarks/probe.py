"""``python -m benchmarks.probe [--sandbox DIR] [--size default|tiny] [--json]``: the probe screener
(the aligned model's refusal direction) against the default encoder screener, on the sandbox world.

The sandbox (built into DIR, or reused when DIR holds one of the same config) gives what a real
run lacks here: an aligned model that refuses, a poisoned mixture with its truth, harmful prompts
about objects no training row names (``data/eval/harmful.jsonl``) and benign how-tos that were
never trained on (``data/eval/benign_howto.jsonl``). The probe learns its direction from the
world's labelled requests (``data/probe_examples.jsonl``, none of them a mixture row), or from
head_data's English requests (what it uses for a model of your own). Rows/s is wall time of
``score`` at torch's thread count, model loading and the direction's fit excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def flag_rate(screener, records) -> float:
    return round(sum(r.flagged for r in screener.score(records)) / len(records), 4)


def measure(screener, mixture, truth, unseen_harmful, howtos) -> dict:
    from asft.data.report import quality

    start = time.perf_counter()
    flags = [r.flagged for r in screener.score(mixture)]
    wall = time.perf_counter() - start
    q = quality(truth, flags)
    return {"mixture_recall": q["recall"], "mixture_fpr": q["false_positive_rate"],
            "rows_per_s": round(len(mixture) / wall, 1), "unseen_harmful_flagged": flag_rate(screener, unseen_harmful),
            "benign_howtos_flagged": flag_rate(screener, howtos)}


def run(sandbox: str, size: str) -> dict:
    from asft.data.screening.encoder import encoder_screener
    from asft.data.screening.probe import ProbeConfig, ProbeScreener
    from asft.sandbox import SandboxConfig, build_sandbox
    from asft.templates import Record

    world = build_sandbox(SandboxConfig(size=size), sandbox)
    rows = [json.loads(line) for line in Path(world["finetune"]).read_text().splitlines()]
    harmful = set(json.loads(Path(world["finetune_labels"]).read_text())["harmful_indices"])
    mixture = [Record(r["instruction"], r["input"], r["output"]) for r in rows]
    truth = [i in harmful for i in range(len(rows))]
    prompts = lambda key: [Record(json.loads(line)["instruction"]) for line in Path(world[key]).read_text().splitlines()]  # noqa: E731
    unseen, howtos = prompts("harmful_eval"), prompts("benign_eval")
    result = {"sandbox": world["out"], "mixture_rows": len(rows), "mixture_harmful": len(harmful), "arms": {}}
    for arm, examples in (("probe, the world's examples", world["probe_examples"]), ("probe, head_data", None)):
        start = time.perf_counter()
        probe = ProbeScreener(ProbeConfig(model=world["aligned"], examples=examples, template="alpaca"), device="cpu")
        fit_s = round(time.perf_counter() - start, 1)
        result["arms"][arm] = {**measure(probe, mixture, truth, unseen, howtos), "layer": probe.layer, "fit_s": fit_s,
                               "held_out": probe.fitted["operating_point"]}
    result["arms"]["default encoder"] = measure(encoder_screener(), mixture, truth, unseen, howtos)
    return result


def table(result: dict) -> str:
    lines = [f"sandbox {result['sandbox']}: mixture of {result['mixture_rows']} rows, {result['mixture_harmful']} harmful",
             f"{'screener':28} {'recall':>7} {'FPR':>7} {'rows/s':>8} {'unseen harmful':>15} {'benign how-tos':>15}  held-out (examples)"]
    for arm, m in result["arms"].items():
        held = m.get("held_out")
        where = f"layer {m['layer']}: recall {held['recall']:.3f} at FPR {held['fpr']:.3f}, fit {m['fit_s']} s" if held else ""
        lines.append(f"{arm:28} {m['mixture_recall']:7.3f} {m['mixture_fpr']:7.3f} {m['rows_per_s']:8.1f} "
                     f"{m['unseen_harmful_flagged']:15.3f} {m['benign_howtos_flagged']:15.3f}  {where}")
    lines.append("'unseen harmful': share of the world's held-out harmful prompts flagged (objects no training row names); "
                 "'benign how-tos': share of its held-out benign how-tos flagged (lower is better)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", default="runs/bench-sandbox", help="folder the sandbox is built into (or reused from)")
    parser.add_argument("--size", choices=("default", "tiny"), default="default", help="tiny: checks the code runs (tests)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = run(args.sandbox, args.size)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
