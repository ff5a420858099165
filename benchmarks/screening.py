"""``python -m benchmarks.screening [--json]``: screening quality and speed, side by side.

Sets: the asft-bench training files from ASFT_BENCH_DATA with their ``*.harmful.json`` ground
truth (the "\\n\\nAssistant:" artefact is stripped from instructions first: a screener keying on
it would learn nothing), and the held-out files (never fit or calibrate on them):
``benchmarks/data/screening_holdout`` (general-purpose instruction data and task mixtures with
harm mixed in, written independently of every screener's data, read in every session since) and
``benchmarks/data/screening_fresh*`` (chat turns and instruction data, each written blind and
measured once the choice it would judge was made; each folder's README says which). Arms: the default
encoder screener (tuned, behind its word prefilter, with its early exit), the same without the early exit, the
transformer alone (neither), the zero-shot encoder, the rules, default + rules combined (any),
the default calibrated at 3 % FPR on the file's own first 30 % (a user's labelled
sample), judged on the remaining rows, and the cascade's ceiling (the default's band sent to a judge
that is always right: what ``combine=cascade`` can reach, and the share of rows its judge reads). Plus the
flag rate on the BeaverTails evaluation prompts (unfiltered, so not all harmful; no truth).
Rows/s is wall time of ``score`` (model loading excluded) at torch's thread count, and the
CPU seconds it took; other processes on the machine slow the wall figure. "throughput": the
default (and the transformer alone) over every distinct row of every file in one call, after a
warm-up: the large-file figure (``--device cuda --batch-size 256`` for a GPU worker's). "cleared": the share
of turns the prefilter decided without the transformer; "exited": the share that stopped after the
transformer's first layers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TRAINING_FILES = ("SST2_1k_p_0.1", "agnews_1k_p_0.1", "gsm8k_1k_p_0.1", "gsm8k_1k_p_0")
ARTEFACT = "\n\nAssistant:"

HELD_OUT = {f"{folder}/{name}": Path(__file__).parent / "data" / f"screening_{folder}" / f"{name}.jsonl"
            for folder, names in (("holdout", ("general", "tasks")), ("fresh", ("chat", "instructions")),
                                  ("fresh2", ("chat",)), ("fresh3", ("chat",)), ("fresh4", ("chat",)),
                                  ("fresh5", ("mixed",)))
            for name in names}  # written independently of any screener's data
# the held-out writers' names for head_data's harm categories ("sexual_exploitation" may be either)
SAME_CATEGORY = {"stalking_privacy": ("privacy_stalking",), "sexual_content_minors": ("sexual_minors",),
                 "child_sexual_abuse": ("sexual_minors",), "non_consensual_sexual": ("sexual_nonconsensual",),
                 "sexual_exploitation": ("sexual_minors", "sexual_nonconsensual"), "terrorism": ("extremism_terrorism",),
                 "manipulation": ("unethical_manipulation",), "manipulation_blackmail": ("unethical_manipulation",),
                 "animal_cruelty": ("animal_abuse",), "piracy": ("intellectual_property",)}
SAMPLE_SHARE = 0.3  # "your own labelled sample": the first 30 % of a file calibrates the threshold for the rest


def load(folder: Path, name: str):
    """Records of a training file (artefact stripped here, in the harness) and its truth."""
    from asft.data.ingest import ingest
    from asft.templates import Record

    data = ingest(str(folder / f"{name}.json"))
    truth = set(json.loads((folder / f"{name}.harmful.json").read_text())["harmful_indices"])
    records = [Record(r.record.instruction.removesuffix(ARTEFACT), r.record.input, r.record.output) for r in data.rows]
    return records, [r.row_index in truth for r in data.rows]


def load_held_out(name: str, categories: bool = False):
    """Records and truth of a held-out file (``harmful`` column), by its HELD_OUT name; with
    ``categories``, also the head_data categories each harmful row may be named (None: benign)."""
    from asft.templates import Record

    rows = [json.loads(line) for line in HELD_OUT[name].read_text().splitlines()]
    records, truth = [Record(r["instruction"], r["input"], r["output"]) for r in rows], [r["harmful"] for r in rows]
    if not categories:
        return records, truth
    return records, truth, [SAME_CATEGORY.get(r["category"], (r["category"],)) if r["harmful"] else None for r in rows]


def timed(screener, records):
    """Flags, scores, speed and the category each row's first reason names."""
    from asft.data.review import category_of

    turns = dict(getattr(screener, "turns", {}))
    wall, cpu = time.perf_counter(), time.process_time()
    results = screener.score(records)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    speed = {"rows_per_s": round(len(records) / wall, 1), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
    if turns:
        after = screener.turns
        share = lambda key: round((after[key] - turns[key]) / max(after["screened"] - turns["screened"], 1), 3)  # noqa: E731
        speed |= {"cleared": share("cleared_by_prefilter") if screener.prefilter else None,
                  "exited": share("exited_early") if screener.early_exit else None}
    return [r.flagged for r in results], [r.score for r in results], speed, [category_of(list(r.reasons)) for r in results]


def calibrated(scores: list[float], truth: list[bool]):
    """The encoder with its threshold set at 3 % FPR on the file's first rows (the user's labelled
    sample), judged on the rest only (the sample's rows are marked None)."""
    from asft.data.screening.calibration import threshold_for_fpr

    cut = int(len(scores) * SAMPLE_SHARE)
    benign = [s for s, t in zip(scores[:cut], truth[:cut]) if not t]
    threshold = threshold_for_fpr(benign, 0.03)
    return [None] * cut + [s > threshold for s in scores[cut:]], None, {"rows_per_s": None, "cpu_s": None, "wall_s": None,
                                                                         "threshold": round(threshold, 4)}, None


def cascade_ceiling(scores: list[float], truth: list[bool]):
    """The cascade's best case (``combine=cascade`` with the default band): a judge always right on
    the rows it reads. "judged" is the share of rows it reads; a real judge's errors come on top."""
    from asft.data.screen import ScreenConfig

    low, high = (ScreenConfig.model_fields[f].default for f in ("cascade_clear_below", "cascade_flag_above"))
    band = [low <= s <= high for s in scores]
    return ([s > high or (b and t) for s, b, t in zip(scores, band, truth)], None,
            {"rows_per_s": None, "cpu_s": None, "wall_s": None, "judged": round(sum(band) / len(band), 3)}, None)


def arms(screeners: dict, records, truth) -> dict:
    """Flags and speed of each screener, and of encoder+rules combined with ``any`` (derived:
    the combination flags what either flags and costs the sum of both)."""
    out = {name: timed(s, records) for name, s in screeners.items()}
    (enc, enc_scores, enc_speed, _), (rul, _, rul_speed, _) = out["encoder"], out["rules"]
    wall = enc_speed["wall_s"] + rul_speed["wall_s"]
    out["encoder calibrated"] = calibrated(enc_scores, truth)
    out["cascade ceiling"] = cascade_ceiling(enc_scores, truth)
    out["encoder+rules"] = ([a or b for a, b in zip(enc, rul)], None,
                            {"rows_per_s": round(len(records) / wall, 1) if wall else None,
                             "cpu_s": round(enc_speed["cpu_s"] + rul_speed["cpu_s"], 2), "wall_s": round(wall, 2)}, None)
    return out


def judged(arms_out: dict, truth: list[bool]) -> dict:
    """Quality and speed of each arm on the rows it judged (None: a calibration-sample row)."""
    from asft.data.report import quality

    entry = {}
    for arm, (flagged, _, speed, _) in arms_out.items():
        kept = [(t, f) for t, f in zip(truth, flagged) if f is not None]
        q = quality([t for t, _ in kept], [f for _, f in kept])
        entry[arm] = {k: q[k] for k in ("recall", "false_positive_rate", "precision", "f1")} | speed | {"rows": len(kept)}
    return entry


def named_right(flagged: list[bool], named: list[str], categories: list) -> dict:
    """The share of caught harmful rows whose reason names the category they were written for."""
    caught = [(n, c) for f, n, c in zip(flagged, named, categories) if f and c is not None]
    return {"caught": len(caught), "named_right": round(sum(n in c for n, c in caught) / max(len(caught), 1), 3)}


def throughput(screener, sets) -> dict:
    """Rows/s of one ``score`` call over every distinct row of every set (``score`` reads a
    repeated text once, so repeats would inflate it), after a warm-up call: the figure for a large
    file, without the per-file start-up that dominates a 400-row file on a GPU."""
    import torch

    from asft.templates import Record

    records = list({repr(r): r for _, rows, *_ in sets for r in rows}.values())
    screener.score([Record(f"warm-up {i}") for i in range(64)])
    if screener.model.device.type == "cuda":
        torch.cuda.synchronize()
    _, _, speed, _ = timed(screener, records)
    return {"rows": len(records)} | speed


def run(folder: Path | None, device: str = "cpu", batch_size: int = 16, precision: str = "auto",
        tuned_model: str | None = None, files: list[str] | None = None) -> dict:
    import torch

    from asft.data.screening.encoder import EncoderConfig, EncoderScreener, encoder_screener
    from asft.data.screening.rules import RulesScreener
    from asft.templates import Record

    tuned = {"device": device, "batch_size": batch_size, "precision": precision} | ({"tuned_model": tuned_model} if tuned_model else {})
    encoder = encoder_screener(EncoderConfig(**tuned))
    screeners = {"encoder": encoder, "no early exit": encoder_screener(EncoderConfig(**tuned, early_exit=False)),
                 "tuned alone": encoder_screener(EncoderConfig(**tuned, prefilter=False, early_exit=False)),
                 "zero-shot": EncoderScreener(EncoderConfig(mode="zero-shot", device=device, batch_size=batch_size)),
                 "rules": RulesScreener()}
    result = {"threads": torch.get_num_threads(), "encoder": encoder.describe(), "files": {}, "naming": {},
              "generalisation": {}}
    wanted = lambda name: files is None or name in files  # noqa: E731
    sets = [(name, *load(folder, name), None) for name in TRAINING_FILES if wanted(name)] if folder is not None else []
    sets += [(name, *load_held_out(name, categories=True)) for name in HELD_OUT if wanted(name)]
    for name, records, truth, categories in sets:
        measured = arms(screeners, records, truth)
        result["files"][name] = judged(measured, truth)
        if categories:
            flagged, _, _, named = measured["encoder"]
            result["naming"][name] = named_right(flagged, named, categories)
    result["throughput"] = {arm: throughput(screeners[arm], sets) for arm in ("encoder", "tuned alone")}
    if folder is not None and wanted("beavertails"):
        prompts = json.loads((folder / "saved_dataset_250.json").read_text())
        beaver = [Record(p["instruction"]) for p in prompts]
        flags = arms(screeners, beaver, [False] * len(beaver))
        result["generalisation"]["beavertails_250_flag_rate"] = {
            arm: round(sum(f for f in flagged if f is not None) / sum(f is not None for f in flagged), 3)
            for arm, (flagged, _, _, _) in flags.items() if arm not in ("encoder calibrated", "cascade ceiling")}  # they need truth
    return result


def table(result: dict) -> str:
    lines = [f"{'file':18} {'screener':19} {'rows':>5} {'recall':>7} {'FPR':>7} {'prec':>7} {'F1':>7} {'rows/s':>8} {'cpu_s':>7} {'cleared':>7} {'exited':>7} {'judged':>7}"]
    fmt = lambda v, spec="7.3f": f"{v:{spec}}" if isinstance(v, float) else f"{'-':>{spec.split('.')[0]}}"  # noqa: E731
    for name, arms_out in result["files"].items():
        for arm, m in arms_out.items():
            lines.append(f"{name:18} {arm:19} {m['rows']:5d} {fmt(m['recall'])} {fmt(m['false_positive_rate'])} "
                         f"{fmt(m['precision'])} {fmt(m['f1'])} {fmt(m['rows_per_s'], '8.1f')} {fmt(m['cpu_s'], '7.2f')} "
                         f"{fmt(m.get('cleared'))} {fmt(m.get('exited'))} {fmt(m.get('judged'))}")
    for name, value in result["naming"].items():
        lines.append(f"{name}: of the {value['caught']} harmful rows the default catches, it names "
                     f"{value['named_right']:.1%} by the category they were written for")
    for arm, value in result["throughput"].items():
        lines.append(f"throughput, {arm}, every distinct row of these files in one call ({value['rows']} rows, "
                     f"batch {result['encoder']['batch_size']}, {result['encoder']['device']}, "
                     f"{result['encoder']['precision']}): {value['rows_per_s']} rows/s")
    for label, value in result["generalisation"].items():
        lines.append(f"{label}: {json.dumps(value)}")
    lines.append(f"'encoder calibrated': the threshold at 3 % FPR on the file's first {SAMPLE_SHARE:.0%} (your labelled "
                 "sample), judged on the rest; 'cascade ceiling': combine=cascade with a judge that is always right, "
                 "'judged' the share of rows it reads; rows/s is wall time at torch's thread count")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.screening", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="cpu", help="where the encoders run: cpu | cuda | auto")
    parser.add_argument("--batch-size", type=int, default=16, help="encoder batch size (16 is fastest on two CPU cores; "
                        "256 or more on a GPU)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="the tuned screener's")
    parser.add_argument("--tuned-model", help="a folder from `asft screen tune` instead of the default screener "
                        "(on a machine whose default is not built yet: no first-use tune)")
    parser.add_argument("--files", help="comma-separated names of the sets to run (default: all): "
                        + ", ".join([*TRAINING_FILES, *HELD_OUT, "beavertails"]))
    args = parser.parse_args(argv)
    files = args.files.split(",") if args.files else None
    unknown = sorted(set(files or ()) - {*TRAINING_FILES, *HELD_OUT, "beavertails"})
    if unknown:
        parser.error(f"--files: no set named {unknown[0]}; the sets are " + ", ".join([*TRAINING_FILES, *HELD_OUT, "beavertails"]))
    env = os.environ.get("ASFT_BENCH_DATA")
    folder = Path(env) if env and Path(env).is_dir() else None
    if folder is None:
        print("ASFT_BENCH_DATA is not set to the asft-bench folder: only the generalisation sets run", file=sys.stderr)
    from asft.errors import AsftError

    try:
        result = run(folder, args.device, args.batch_size, args.precision, args.tuned_model, files)
    except AsftError as exc:  # no GPU, no bundled encoder, a folder that is not a tuned screener: one line
        print(f"benchmarks.screening: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
