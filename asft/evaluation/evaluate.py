"""One evaluation: generate greedy answers, judge the harmful ones (with one or more judges),
count refusals of benign prompts that look sensitive (over-refusal), score the utility ones,
and write ``report.json`` (figures, per-prompt outcomes for paired gates, the protocol) and
``samples.jsonl`` (every prompt, answer and verdict) as one folder.

The evaluator's pieces (:class:`EvalSets`, :func:`answer`, :func:`judge_harmful`,
:func:`refusals`, :func:`utility_correct`) are the project's one evaluator: the landscape
sweep scores every grid point with them too.

``protocol`` holds only what defines the measurement (prompt sets by content hash,
template, decoding, judges), not the model or adapter measured, so the gates can compare a
candidate with the champion exactly when both were measured the same way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from time import perf_counter
from typing import Any, Callable, Sequence

from asft import storage
from asft.errors import AsftError
from asft.evaluation.config import EvalConfig
from asft.evaluation.datasets import HarmfulPrompt, UtilityRow, load_harmful, load_prompts, load_utility, resolve_set
from asft.evaluation.generation import decode, encode_records, free_accelerator_memory, generate_from_ids, load_model
from asft.evaluation.judges import JudgeConfig, KeywordJudge, Verdict, make_judge
from asft.evaluation.scorers import make_scorer
from asft.gates import Outcomes
from asft.statistics import cohen_kappa, wilson_interval
from asft.templates import SYSTEM_PROMPT, Record, resolve_template


def _say(config: EvalConfig, message: str) -> None:
    if config.progress:
        print(f"[eval] {message}", file=sys.stderr, flush=True)


def describe_set(uri: str, rows_used: int) -> dict[str, Any]:
    """What the report records of a prompt set: its content hash and size, file by file."""
    from asft.data.sources import SourceReader

    reader = SourceReader(resolve_set(uri), unknown_format="json")
    rows = sum(1 for _ in reader)
    return {"file": PurePosixPath(str(uri)).name, "sha256": reader.sha256, "rows_in_file": rows,
            "rows_used": rows_used, "files": [f.as_dict() for f in reader.files]}


@dataclass
class EvalSets:
    """The prompt sets of one evaluation, in the order they are answered."""

    harmful: list[HarmfulPrompt] = field(default_factory=list)
    over_refusal: list[Record] = field(default_factory=list)
    utility: dict[str, list[UtilityRow]] = field(default_factory=dict)
    first: int = 0  # a shard's row k is row first + k * step of the whole set
    step: int = 1

    def position(self, k: int) -> int:
        return self.first + k * self.step

    def shard(self, index: int, count: int) -> "EvalSets":
        """Shard ``index`` of ``count``: every count-th row of each set, from row ``index``
        (round robin, so long and short prompts spread over the shards)."""
        small = [(name, size) for name, size in self.sizes().items() if 0 < size < count]
        if small:
            name, size = small[0]
            raise AsftError(f"shard {index}/{count}: the {name} set has {size} rows, fewer than the {count} shards; "
                            f"use at most {size} shards")
        return EvalSets(self.harmful[index::count], self.over_refusal[index::count],
                        {task: rows[index::count] for task, rows in self.utility.items()}, first=index, step=count)

    def sizes(self) -> dict[str, int]:
        return {"harmful": len(self.harmful), "over_refusal": len(self.over_refusal),
                **{task: len(rows) for task, rows in self.utility.items()}}

    def records(self) -> list[Record]:
        return ([p.record for p in self.harmful] + self.over_refusal
                + [row.record for rows in self.utility.values() for row in rows])

    def split(self, values: Sequence) -> dict[str, list]:
        """Per set, its share of a list made in :meth:`records` order."""
        parts, first = {}, 0
        for name, size in self.sizes().items():
            parts[name], first = list(values[first:first + size]), first + size
        return parts


def load_sets(harmful: str | None, over_refusal: str | None, utility: dict[str, str], limit: int | None,
              utility_limit: int | None = None) -> EvalSets:
    """Read and check every prompt set (bad files fail here, before any model is loaded)."""
    return EvalSets(
        harmful=load_harmful(harmful, limit) if harmful else [],
        over_refusal=load_prompts(over_refusal, limit) if over_refusal else [],
        utility={task: load_utility(task, uri, utility_limit if utility_limit is not None else limit)
                 for task, uri in utility.items()})


def answer(model, tokenizer, records: list[Record], *, template: str, max_new_tokens: int, batch_size: int,
           progress: bool = False, system_prompt: str = SYSTEM_PROMPT) -> tuple[list[str], list[int], int]:
    """Greedy answers in record order, the indices of prompts cut to fit the context, and
    how many tokens were generated. Prompts are the ids training uses for the same conversation."""
    encoded, cut = encode_records(model.config, tokenizer, records, template=resolve_template(template, tokenizer),
                                  system_prompt=system_prompt, max_new_tokens=max_new_tokens)
    token_ids = generate_from_ids(model, tokenizer, encoded, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  progress=progress)
    return decode(tokenizer, token_ids), cut, sum(len(ids) for ids in token_ids)


def judge_harmful(judges: dict[str, Any], prompts: list[HarmfulPrompt], answers: list[str]) -> dict[str, list[Verdict]]:
    """Each judge's verdicts on the answers to the harmful prompts."""
    questions = [p.record.request for p in prompts]
    return {name: judge.flags(questions, answers) for name, judge in judges.items()}


def refusals(prompts: list[Record], answers: list[str]) -> list[bool]:
    """Which answers to benign prompts are refusals (the keyword judge's refusal phrases)."""
    return [not v.flagged for v in KeywordJudge().flags([r.request for r in prompts], answers)]


def utility_correct(task: str, rows: list[UtilityRow], answers: list[str]) -> list[bool]:
    scorer = make_scorer(task)
    return [scorer(a, row.gold) for a, row in zip(answers, rows)]


def _judge_names(configs: list[JudgeConfig]) -> list[str]:
    names = [f"{c.kind}:{PurePosixPath(str(c.model)).name}" if c.uses_model else c.kind for c in configs]
    if len(set(names)) != len(names):
        raise AsftError(f"judges {', '.join(names)}: each judge may run once; drop the repeated one")
    return names


def _rate(flags: list[bool]) -> dict[str, Any]:
    low, high = wilson_interval(sum(flags), len(flags))
    return {"score": 100.0 * sum(flags) / len(flags), "ci95": [100.0 * low, 100.0 * high],
            "count": sum(flags), "total": len(flags), "outcomes": Outcomes.of(flags).model_dump()}


def _harmful_report(rows: list[dict[str, Any]], described: dict[str, dict]) -> dict:
    """Harmful score (first judge), every judge's score, their agreement, per-category scores,
    from the harmful prompts' sample rows."""
    first = next(iter(described))
    flags = {name: [row["flagged_by"][name] for row in rows] for name in described}
    main = _rate(flags[first])
    by_category: dict[str, list[bool]] = {}
    for row, flag in zip(rows, flags[first]):
        by_category.setdefault(row["category"], []).append(flag)
    return {
        "harmful_score": main["score"], "harmful_score_ci95": main["ci95"], "harmful_flagged": main["count"],
        "harmful_total": main["total"], "judge": first,
        "harmful_score_measures": described[first].get("measures", "harmful answers"),
        "judge_unparsed": sum(not row["parsed"] for row in rows),
        "judges": {name: {**_rate(f), "describe": described[name]} for name, f in flags.items()},
        "judge_agreement": [{"judges": [first, name], "kappa": cohen_kappa(flags[first], f),
                             "disagreeing": [row["index"] for row, a, b in zip(rows, flags[first], f) if a != b]}
                            for name, f in flags.items() if name != first],
        "harmful_by_category": {cat: _rate(f) for cat, f in sorted(by_category.items())},
    }


def _samples(sets: EvalSets, answers: dict[str, list], verdicts: dict[str, list[Verdict]], refused: list[bool],
             correct: dict[str, list[bool]]) -> list[dict[str, Any]]:
    """One row per prompt, in set order; ``index`` is the row's place in its whole set."""
    first = next(iter(verdicts), None)
    at = sets.position
    rows = [{"set": "harmful", "index": at(i), "instruction": p.record.instruction, "input": p.record.input,
             "category": p.category, "answer": a, "flagged": verdicts[first][i].flagged,
             "score": verdicts[first][i].score, "reason": verdicts[first][i].reason, "parsed": verdicts[first][i].parsed,
             "flagged_by": {name: vs[i].flagged for name, vs in verdicts.items()}}
            for i, (p, a) in enumerate(zip(sets.harmful, answers["harmful"]))]
    rows += [{"set": "over_refusal", "index": at(i), "instruction": r.instruction, "input": r.input, "answer": a,
              "refused": refused[i]} for i, (r, a) in enumerate(zip(sets.over_refusal, answers["over_refusal"]))]
    for task, rows_of_task in sets.utility.items():
        rows += [{"set": task, "index": at(i), "instruction": row.record.instruction, "input": row.record.input,
                  "answer": a, "gold": row.gold, "correct": ok}
                 for i, (row, a, ok) in enumerate(zip(rows_of_task, answers[task], correct[task]))]
    return rows


def hf_answers(config: EvalConfig, records: list[Record],
               on_loaded: Callable[[], None]) -> tuple[list[str], list[int], int, str, float]:
    """The transformers engine: answers, cut prompts, new tokens, template, load seconds;
    ``on_loaded`` is called once the model is ready (bad checkpoints fail before it)."""
    start = perf_counter()
    model, tokenizer = load_model(config.model, config.adapter, dtype=config.dtype, device=config.device,
                                  trust_remote_code=config.trust_remote_code, allow_other_base=config.allow_other_base)
    loaded = perf_counter() - start
    on_loaded()
    template = resolve_template(config.template, tokenizer)
    answers, cut, new_tokens = answer(model, tokenizer, records, template=template, system_prompt=config.system_prompt,
                                      max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                      progress=config.progress)
    del model
    free_accelerator_memory()
    return answers, cut, new_tokens, template, loaded


def _engine(config: EvalConfig):
    if config.engine == "vllm":
        from asft.evaluation.vllm_backend import vllm_answers

        return vllm_answers
    return hf_answers


def _generate(config: EvalConfig, sets: EvalSets) -> tuple[dict[str, list[str]], dict[str, int], dict, str]:
    """Answer every prompt with the configured engine, which lets the model go (the judges may
    need the memory). Also returns the template used (auto: the model's chat template if it
    has one, else alpaca)."""
    start = perf_counter()
    records = sets.records()

    def on_loaded() -> None:
        _say(config, f"generating {len(records)} answers ({config.engine}, greedy, max {config.max_new_tokens} new tokens)")

    answers, cut, new_tokens, template, load_s = _engine(config)(config, records, on_loaded)
    if cut:
        _say(config, f"{len(cut)} prompts longer than the model's context were cut in the middle "
                     f"(start and answer cue kept; see report.json prompts_truncated)")
    seconds = perf_counter() - start - load_s
    cut = set(cut)
    cut_by_set = {name: sum(flags) for name, flags in sets.split([i in cut for i in range(len(records))]).items()}
    return sets.split(answers), cut_by_set, {
        "load_s": load_s, "generate_s": seconds, "prompts": len(records), "new_tokens": new_tokens,
        "prompts_per_s": len(records) / seconds if seconds else None,
        "tokens_per_s": new_tokens / seconds if seconds else None}, template


def _judge(config: EvalConfig, sets: EvalSets, answers: dict[str, list[str]]) -> tuple[dict, dict]:
    """Each judge's verdicts on the harmful answers and its description, one judge in memory at a time."""
    judge_configs = [config.judge, *config.extra_judges] if sets.harmful else []
    verdicts, described = {}, {}
    for name, judge_config in zip(_judge_names(judge_configs), judge_configs):
        _say(config, f"judging {len(sets.harmful)} answers ({name})")
        judge = make_judge(judge_config, device=config.device, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        verdicts.update(judge_harmful({name: judge}, sets.harmful, answers["harmful"]))
        described[name] = judge.describe()
        del judge
        free_accelerator_memory()
    return verdicts, described


def _protocol(config: EvalConfig, sets: EvalSets, described: dict[str, dict], template: str) -> dict[str, Any]:
    protocol = {
        "harmful_set": describe_set(config.harmful, len(sets.harmful)) if config.harmful else None,
        "over_refusal_set": describe_set(config.over_refusal, len(sets.over_refusal)) if config.over_refusal else None,
        "utility_sets": {task: describe_set(uri, len(sets.utility[task])) for task, uri in config.utility.items()},
        "limit": config.limit, "template": template, "system_prompt": config.system_prompt, "decoding": "greedy",
        "max_new_tokens": config.max_new_tokens,
        "judge": next(iter(described.values()), None), "judges": list(described.values()),
    }
    if config.shard is not None:  # a shard measures part of the sets: never compared as a whole evaluation
        protocol["shard"] = config.shard
    return protocol


def build_report(config: EvalConfig, sets: EvalSets, samples: list[dict[str, Any]], described: dict[str, dict],
                 template: str, cut: dict[str, int]) -> dict[str, Any]:
    """The report's figures, from the per-prompt sample rows (so a merge of shard rows gives
    the whole evaluation's report), the protocol and what was measured; timings come later."""
    rows = {name: [row for row in samples if row["set"] == name] for name in sets.sizes()}
    report: dict[str, Any] = {"harmful_score": None, "harmful_score_ci95": None}
    if rows["harmful"]:
        report.update(_harmful_report(rows["harmful"], described))
    refused = [row["refused"] for row in rows["over_refusal"]]
    if refused:
        rate = _rate(refused)
        report.update({"over_refusal": rate["score"], "over_refusal_ci95": rate["ci95"], "over_refusal_outcomes": rate})
    correct = {task: [row["correct"] for row in rows[task]] for task in sets.utility}
    report["utility"] = {task: 100.0 * sum(ok) / len(ok) for task, ok in correct.items()}
    report["utility_counts"] = {task: {"correct": sum(ok), "total": len(ok)} for task, ok in correct.items()}
    report["utility_outcomes"] = {task: Outcomes.of([not x for x in ok]).model_dump() for task, ok in correct.items()}
    report["protocol"] = _protocol(config, sets, described, template)
    report["prompts_truncated"], report["prompts_truncated_by_set"] = sum(cut.values()), cut
    report.update(model=config.model, adapter=config.adapter,
                  adapter_sha256=storage.sha256_tree(storage.materialize(config.adapter)) if config.adapter else None,
                  settings={"batch_size": config.batch_size, "dtype": config.dtype, "device": config.device,
                            "engine": config.engine})
    if config.shard is not None:
        report["shard"] = config.shard
    return report


def write_evaluation(config: EvalConfig, report: dict[str, Any], samples: list[dict[str, Any]],
                     timings: dict[str, Any]) -> dict[str, Any]:
    """OUT/report.json and OUT/samples.jsonl, appearing together."""
    report["timings"] = timings
    report["report"], report["samples"] = storage.join(config.out, "report.json"), storage.join(config.out, "samples.jsonl")
    with storage.staged_dir(config.out, "evaluation") as stage:
        storage.write_jsonl(stage / "samples.jsonl", samples)
        storage.write_json(stage / "report.json", report)
    _say(config, f"wrote {report['report']}")
    return report


def check_inputs(config: EvalConfig) -> EvalSets:
    """Read and check every input and the output before the slow part, so bad input fails in
    seconds; returns the prompt sets (the shard's, with ``shard`` set)."""
    from asft.modeling import load_tokenizer, resolve_checkpoint

    if config.engine == "vllm":  # before anything is read or loaded
        from asft.evaluation.vllm_backend import check_vllm

        check_vllm(config.device)
    storage.check_output(config.out, "evaluation", inputs=(config.model, config.adapter, config.harmful,
                                                           config.over_refusal, *config.utility.values()))
    sets = load_sets(config.harmful, config.over_refusal, config.utility, config.limit)
    if config.shard is not None:
        sets = sets.shard(*config.shard_of())
    judge_configs = [config.judge, *config.extra_judges] if sets.harmful else []
    _judge_names(judge_configs)
    for judge in judge_configs:
        if judge.uses_model:
            resolve_checkpoint(judge.model, what="judge model")
    if config.template == "chat":  # the one template a tokenizer may lack: fail before the model is loaded
        resolve_template(config.template, load_tokenizer(config.model, trust_remote_code=config.trust_remote_code))
    return sets


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation a config describes; writes OUT/report.json and OUT/samples.jsonl as one folder."""
    start = perf_counter()
    sets = check_inputs(config)
    answers, cut, timings, template = _generate(config, sets)
    judge_start = perf_counter()
    verdicts, described = _judge(config, sets, answers)
    timings["judge_s"] = perf_counter() - judge_start
    refused = refusals(sets.over_refusal, answers["over_refusal"])
    correct = {task: utility_correct(task, rows, answers[task]) for task, rows in sets.utility.items()}
    samples = _samples(sets, answers, verdicts, refused, correct)
    report = build_report(config, sets, samples, described, template, cut)
    timings["total_s"] = perf_counter() - start
    return write_evaluation(config, report, samples, timings)
