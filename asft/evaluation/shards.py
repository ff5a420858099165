"""One evaluation split over workers: shard I/N (``EvalConfig.shard``) answers rows I, I+N,
I+2N, ... of every prompt set and writes its own report and samples; :func:`merge_shards`
puts the N shard outputs back together into the report and samples the whole evaluation
writes. The figures are rebuilt from the shards' per-prompt rows with the evaluator's own
:func:`build_report`, so a merged report equals the unsharded one (timings aside)."""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any

from asft import storage
from asft.errors import AsftError
from asft.evaluation.config import EvalConfig
from asft.evaluation.evaluate import build_report, load_sets, write_evaluation


def shard_outputs(out: str, count: int) -> dict[str, str]:
    """``"I/N"`` -> the output folder of that shard, beside the whole evaluation's ``out``."""
    return {f"{i}/{count}": f"{str(out).rstrip('/')}-shards/{i}-of-{count}" for i in range(count)}


def _measured_alike(report: dict[str, Any]) -> dict[str, Any]:
    """What every shard of one evaluation must share: its protocol (rows used aside), settings, model, adapter."""
    protocol = {k: v for k, v in report["protocol"].items() if k != "shard"}
    for key in ("harmful_set", "over_refusal_set"):
        if protocol.get(key):
            protocol[key] = {k: v for k, v in protocol[key].items() if k != "rows_used"}
    protocol["utility_sets"] = {t: {k: v for k, v in s.items() if k != "rows_used"}
                                for t, s in protocol["utility_sets"].items()}
    return {"protocol": protocol, "settings": report["settings"], "model": report["model"],
            "adapter_sha256": report["adapter_sha256"]}


def _read_shard(uri: str, shard: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not storage.is_complete(uri, "evaluation"):
        raise AsftError(f"shard {shard}: {uri} holds no complete evaluation; run that shard (again) first")
    report = storage.read_json(storage.join(uri, "report.json"))
    if report.get("shard") != shard:
        raise AsftError(f"{uri}: holds shard {report.get('shard') or '(none: a whole evaluation)'}, expected {shard}; "
                        "give the shard outputs in order 0/N ... N-1/N")
    samples = [json.loads(line) for line in storage.read_text(storage.join(uri, "samples.jsonl")).splitlines() if line]
    return report, samples


def _in_order(samples: list[dict[str, Any]], sizes: dict[str, int]) -> list[dict[str, Any]]:
    """The shards' rows in the whole evaluation's order; every row of every set exactly once."""
    order = list(sizes)
    merged = sorted(samples, key=lambda row: (order.index(row["set"]), row["index"]))
    for name, size in sizes.items():
        indices = [row["index"] for row in merged if row["set"] == name]
        if indices != list(range(size)):
            raise AsftError(f"the shards' {name} rows are not rows 0..{size - 1} once each ({len(indices)} rows); "
                            "the shards were run on other prompt sets or limits: run them again with this config")
    return merged


def _timings(reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Generation and judging summed over the shards (worker seconds), each shard's own, the merge's wall time."""
    each = [r["timings"] for r in reports]
    summed = {key: sum(t[key] for t in each) for key in ("load_s", "generate_s", "judge_s", "prompts", "new_tokens")}
    per_s = summed["generate_s"]
    return {**summed, "prompts_per_s": summed["prompts"] / per_s if per_s else None,
            "tokens_per_s": summed["new_tokens"] / per_s if per_s else None, "total_s": seconds, "shards": each}


def merge_shards(config: EvalConfig, shard_outs: list[str]) -> dict[str, Any]:
    """The whole evaluation ``config`` describes (no ``shard``), from the outputs of its shards
    0/N ... N-1/N; writes OUT/report.json and OUT/samples.jsonl like :func:`evaluate`."""
    start = perf_counter()
    if config.shard is not None:
        raise AsftError(f"merge: the config names shard {config.shard}; give the whole evaluation's config (no shard)")
    if not shard_outs:
        raise AsftError("merge: no shard outputs given")
    storage.check_output(config.out, "evaluation", inputs=(config.model, config.adapter, config.harmful,
                                                           config.over_refusal, *config.utility.values(), *shard_outs))
    sets = load_sets(config.harmful, config.over_refusal, config.utility, config.limit)
    count = len(shard_outs)
    read = [_read_shard(uri, f"{i}/{count}") for i, uri in enumerate(shard_outs)]
    reports = [report for report, _ in read]
    for uri, report in zip(shard_outs[1:], reports[1:]):
        if _measured_alike(report) != _measured_alike(reports[0]):
            raise AsftError(f"{uri}: this shard was measured differently from {shard_outs[0]} (protocol, settings, "
                            "model or adapter); run every shard with the same config")
    if reports[0]["model"] != config.model or reports[0]["adapter"] != config.adapter:
        raise AsftError(f"{shard_outs[0]}: shard of model {reports[0]['model']} adapter {reports[0]['adapter']}, "
                        f"not {config.model} {config.adapter}; merge the shards of this evaluation")
    samples = _in_order([row for _, rows in read for row in rows], sets.sizes())
    described = {name: judge["describe"] for name, judge in reports[0].get("judges", {}).items()}
    cut = {name: sum(r["prompts_truncated_by_set"][name] for r in reports) for name in sets.sizes()}
    report = build_report(config, sets, samples, described, reports[0]["protocol"]["template"], cut)
    if _measured_alike(report) != _measured_alike(reports[0]):
        raise AsftError(f"{shard_outs[0]}: the shards were measured on other prompt files or settings than "
                        "this config's; run them again with it")
    return write_evaluation(config, report, samples, _timings(reports, perf_counter() - start))
