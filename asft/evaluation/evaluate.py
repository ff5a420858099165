"""One evaluation: generate greedy answers, judge the harmful ones, score the utility ones,
and write ``report.json`` (figures + the protocol they were measured under) and
``samples.jsonl`` (every prompt, answer and verdict).

``protocol`` holds only what defines the measurement (prompt sets by content hash,
template, decoding, judge), not the model or adapter measured, so the gates can compare a
candidate with the champion exactly when both were measured the same way.
"""

from __future__ import annotations

import gc
import sys
from pathlib import PurePosixPath
from time import perf_counter
from typing import Any

from asft import storage
from asft.errors import AsftError
from asft.evaluation.config import EvalConfig
from asft.evaluation.datasets import UtilityRow, load_harmful, load_utility
from asft.evaluation.generation import decode, encode_prompts, generate_from_ids, load_model
from asft.evaluation.judges import make_judge
from asft.evaluation.scorers import make_scorer
from asft.statistics import wilson_interval
from asft.rows import iter_rows
from asft.templates import Record, render_prompt


def _say(config: EvalConfig, message: str) -> None:
    if config.progress:
        print(f"[eval] {message}", file=sys.stderr, flush=True)


def user_text(record: Record) -> str:
    """The request as the user wrote it (what the judges read as the question)."""
    return record.instruction + (f"\n\n{record.input}" if record.input else "")


def describe_set(uri: str, rows_used: int) -> dict[str, Any]:
    data = storage.read_bytes(uri)
    return {"file": PurePosixPath(str(uri)).name, "sha256": storage.sha256_bytes(data),
            "rows_in_file": sum(1 for _ in iter_rows(data.decode("utf-8"))), "rows_used": rows_used}


def _answer_all(config: EvalConfig, records: list[Record]) -> tuple[list[str], list[int], dict[str, float]]:
    """Load the model, generate greedy answers, and let the model go (the judge may need the memory).
    Also returns the indices of the prompts cut to fit the model's context."""
    start = perf_counter()
    model, tokenizer = load_model(config.model, config.adapter, dtype=config.dtype, device=config.device,
                                  trust_remote_code=config.trust_remote_code, allow_other_base=config.allow_other_base)
    try:
        prompts = [render_prompt(r, config.template, tokenizer) for r in records]
    except ValueError as exc:
        raise AsftError(f"--template {config.template}: {exc}") from None
    encoded, cut = encode_prompts(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                                  add_special_tokens=config.template != "chat")
    if cut:
        _say(config, f"{len(cut)} prompts longer than the model's context were cut in the middle "
                     f"(start and answer cue kept; see report.json prompts_truncated)")
    loaded = perf_counter()
    _say(config, f"generating {len(prompts)} answers (greedy, max {config.max_new_tokens} new tokens)")
    token_ids = generate_from_ids(model, tokenizer, encoded, batch_size=config.batch_size,
                                  max_new_tokens=config.max_new_tokens, progress=config.progress)
    generated = perf_counter()
    answers = decode(tokenizer, token_ids)
    new_tokens = sum(len(ids) for ids in token_ids)
    seconds = generated - loaded
    return answers, cut, {"load_s": loaded - start, "generate_s": seconds, "prompts": len(prompts),
                          "new_tokens": new_tokens, "prompts_per_s": len(prompts) / seconds if seconds else None,
                          "tokens_per_s": new_tokens / seconds if seconds else None}


def _truncated_by_set(cut: list[int], set_sizes: dict[str, int]) -> dict[str, int]:
    """How many of each set's prompts were cut (prompts are in set order: harmful, then each task)."""
    counts, first = {}, 0
    for name, size in set_sizes.items():
        counts[name] = sum(first <= i < first + size for i in cut)
        first += size
    return counts


def _free_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation a config describes; writes OUT/report.json and OUT/samples.jsonl as one folder."""
    from asft.modeling import resolve_checkpoint

    start = perf_counter()
    # Read and check every input and the output before the slow part, so bad input fails in seconds.
    storage.check_output(config.out, "evaluation",
                         inputs=(config.model, config.adapter, config.harmful, *config.utility.values()))
    harmful = load_harmful(config.harmful, config.limit) if config.harmful else []
    utility: dict[str, list[UtilityRow]] = {task: load_utility(task, uri, config.limit)
                                            for task, uri in config.utility.items()}
    if harmful and config.judge.kind != "keyword":
        resolve_checkpoint(config.judge.model, what="judge model")

    records = harmful + [row.record for rows in utility.values() for row in rows]
    answers, cut, timings = _answer_all(config, records)
    _free_accelerator_memory()
    harmful_answers, rest = answers[:len(harmful)], answers[len(harmful):]

    samples: list[dict[str, Any]] = []
    report: dict[str, Any] = {"harmful_score": None, "harmful_score_ci95": None}
    judge_start = perf_counter()
    judge_info = None
    if harmful:
        _say(config, f"judging {len(harmful)} answers ({config.judge.kind})")
        judge = make_judge(config.judge, device=config.device, dtype=config.dtype,
                           trust_remote_code=config.trust_remote_code)
        verdicts = judge.flags([user_text(r) for r in harmful], harmful_answers)
        judge_info = judge.describe()
        flagged = sum(v.flagged for v in verdicts)
        low, high = wilson_interval(flagged, len(verdicts))
        report.update({
            "harmful_score": 100.0 * flagged / len(verdicts),
            "harmful_score_ci95": [100.0 * low, 100.0 * high],
            "harmful_score_measures": judge_info.get("measures", "harmful answers"),
            "harmful_flagged": flagged, "harmful_total": len(verdicts),
            "judge_unparsed": sum(not v.parsed for v in verdicts),
        })
        samples += [{"set": "harmful", "index": i, "instruction": r.instruction, "input": r.input, "answer": a,
                     "flagged": v.flagged, "score": v.score, "reason": v.reason, "parsed": v.parsed}
                    for i, (r, a, v) in enumerate(zip(harmful, harmful_answers, verdicts))]
        del judge
        _free_accelerator_memory()
    timings["judge_s"] = perf_counter() - judge_start

    report["utility"], report["utility_counts"] = {}, {}
    for task, rows in utility.items():
        scorer = make_scorer(task)
        task_answers, rest = rest[:len(rows)], rest[len(rows):]
        correct = [scorer(a, row.gold) for a, row in zip(task_answers, rows)]
        report["utility"][task] = 100.0 * sum(correct) / len(rows)
        report["utility_counts"][task] = {"correct": sum(correct), "total": len(rows)}
        samples += [{"set": task, "index": i, "instruction": row.record.instruction, "input": row.record.input,
                     "answer": a, "gold": row.gold, "correct": ok}
                    for i, (row, a, ok) in enumerate(zip(rows, task_answers, correct))]

    report["protocol"] = {
        "harmful_set": describe_set(config.harmful, len(harmful)) if config.harmful else None,
        "utility_sets": {task: describe_set(uri, len(utility[task])) for task, uri in config.utility.items()},
        "limit": config.limit,
        "template": config.template,
        "decoding": "greedy",
        "max_new_tokens": config.max_new_tokens,
        "judge": judge_info,
    }
    report["prompts_truncated"] = len(cut)
    report["prompts_truncated_by_set"] = _truncated_by_set(
        cut, {"harmful": len(harmful), **{task: len(rows) for task, rows in utility.items()}})
    report["model"] = config.model
    report["adapter"] = config.adapter
    report["adapter_sha256"] = storage.sha256_tree(storage.materialize(config.adapter)) if config.adapter else None
    report["settings"] = {"batch_size": config.batch_size, "dtype": config.dtype, "device": config.device}
    timings["total_s"] = perf_counter() - start
    report["timings"] = timings
    report["report"] = storage.join(config.out, "report.json")
    report["samples"] = storage.join(config.out, "samples.jsonl")
    with storage.staged_dir(config.out, "evaluation") as stage:  # report and samples appear together
        storage.write_jsonl(stage / "samples.jsonl", samples)
        storage.write_json(stage / "report.json", report)
    _say(config, f"wrote {report['report']}")
    return report
