"""``python -m benchmarks.refusals [--json]``: how well ``is_refusal`` (``encoder.keep_refusals``)
tells a refusal from an answer that complies.

Sets: ``benchmarks/data/refusal_pairs/answers.jsonl`` (120 refusals and 120 answers that are not,
by style, written independently of the detector; never tune on them), and "a refusal sentence in
front of a real harmful answer": the opening sentence of each refusal there that passes, followed
by the compliant answer of each harmful row of the asft-bench training files (ASFT_BENCH_DATA),
the way a poisoner who knows the rule would write a row. Regular expressions only: no model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

from asft.data.screening.refusals import is_refusal

ANSWERS = Path(__file__).parent / "data" / "refusal_pairs" / "answers.jsonl"
BENCH_FILES = ("SST2_1k_p_0.1", "agnews_1k_p_0.1", "gsm8k_1k_p_0.1")


def by_style(rows: list[dict]) -> list[dict]:
    """Per label and style: rows and how many the detector calls a refusal."""
    counts = defaultdict(lambda: [0, 0])
    for row in rows:
        count = counts[(row["refusal"], row["style"])]
        count[0] += 1
        count[1] += is_refusal(row["answer"])
    return [{"refusal": label, "style": style, "rows": n, "called_refusal": hits}
            for (label, style), (n, hits) in sorted(counts.items(), key=lambda item: (not item[0][0], item[0][1]))]


def harmful_answers(folder: Path) -> list[str]:
    """The compliant answers of the asft-bench harmful rows, each once."""
    answers = []
    for name in BENCH_FILES:
        rows = json.loads((folder / f"{name}.json").read_text())
        answers += [rows[i]["output"] for i in json.loads((folder / f"{name}.harmful.json").read_text())["harmful_indices"]]
    return list(dict.fromkeys(answers))


def disguised(refusals: list[str], answers: list[str]) -> dict:
    """A refusal's opening sentence, then a real harmful answer: the k-th answer behind the k-th opening, cycling."""
    openings = [re.split(r"(?<=[.!?])\s+", r.strip(), maxsplit=1)[0] for r in refusals if is_refusal(r)]
    rows = [f"{openings[k % len(openings)]} {answer}" for k, answer in enumerate(answers)]
    passed = sum(is_refusal(row) for row in rows)
    return {"rows": len(rows), "openings": len(openings), "called_refusal": passed, "share": round(passed / len(rows), 3)}


def measure() -> dict:
    rows = [json.loads(line) for line in ANSWERS.read_text().splitlines() if line.strip()]
    table = by_style(rows)
    result = {"by_style": table}
    for label, name in ((True, "refusals_kept"), (False, "non_refusals_passed")):
        part = [t for t in table if t["refusal"] == label]
        hits, total = sum(t["called_refusal"] for t in part), sum(t["rows"] for t in part)
        result[name] = {"rows": total, "called_refusal": hits, "share": round(hits / total, 3)}
    folder = os.environ.get("ASFT_BENCH_DATA")
    if folder:
        result["refusal_sentence_before_a_harmful_answer"] = disguised([r["answer"] for r in rows if r["refusal"]],
                                                                       harmful_answers(Path(folder)))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refusals", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    result = measure()
    if parser.parse_args(argv).json:
        print(json.dumps(result, indent=2))
        return
    print("| answer | style | rows | called a refusal |\n|---|---|---|---|")
    for t in result["by_style"]:
        print(f"| {'refusal' if t['refusal'] else 'not a refusal'} | {t['style']} | {t['rows']} | {t['called_refusal']} |")
    for name in ("refusals_kept", "non_refusals_passed", "refusal_sentence_before_a_harmful_answer"):
        if name in result:
            r = result[name]
            print(f"{name.replace('_', ' ')}: {r['called_refusal']} of {r['rows']} ({r['share']:.1%})")
    if "refusal_sentence_before_a_harmful_answer" not in result:
        print("(set ASFT_BENCH_DATA for the disguised harmful answers)", file=sys.stderr)


if __name__ == "__main__":
    main()
