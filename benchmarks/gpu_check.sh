#!/usr/bin/env bash
# GPU check: one NVIDIA GPU, no network, about 6 minutes (every step time-boxed: 8.5 at most).
# Usage: benchmarks/gpu_check.sh OUT_DIR
#   1 environment    GPU, driver, versions                                  -> environment.json
#   2 benchmarks     python -m benchmarks, full mode on CUDA: step at 7B module shapes (hidden
#                    4096, bf16 autocast, 8 x 512 tokens), penalty at 4096, direction memory,
#                    extraction (host side, 1.7 GB checkpoints)              -> benchmarks.json
#   3 sandbox_build  asft sandbox build --size large on CUDA                 -> sandbox_build.json
#   4 sandbox_table  the paper's table on that sandbox (lam 1)               -> sandbox_table.json
#   5 table_lam100   AsFT cells again with lam 100 (the rest reused)        -> table_lam100.json
#   6 generation     batched vs sequential generation on that sandbox       -> generation.json
# The timing benchmarks run first, alone on the GPU. A failing or timed-out step is recorded
# and the next one still runs. OUT_DIR/steps.json: each step's command, exit status, seconds;
# OUT_DIR/<step>.log its stderr; summary.txt the figures in short (also printed last).
# ASFT_GPU_CHECK_DRY_RUN=1: CPU plumbing check (tiny benchmarks, sandbox steps only echoed).
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=${ASFT_GPU_CHECK_DRY_RUN:-0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/asft-gpu-check-XXXXXX")
SANDBOX="$WORK/sandbox-large"
TABLE="$WORK/sandbox-table"
: > "$OUT/steps.tsv"

step() {  # step NAME SECONDS OUTPUT_FILE COMMAND...
  local name=$1 limit=$2 output=$3; shift 3
  local start rc ms
  start=$(date +%s%N)
  echo "[gpu_check] $name: $*" >&2
  timeout --kill-after=10 "$limit" "$@" > "$output" 2> "$OUT/$name.log"
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))  # no bc on bare GPU images
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$ms" "$limit" "$*" >> "$OUT/steps.tsv"
  echo "[gpu_check] $name: exit $rc after $((ms / 1000)) s" >&2
}

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; MODE=(--tiny); SIZE=tiny; RUN=(echo dry-run:)
else
  DEVICE=cuda; MODE=(); SIZE=large; RUN=()
fi

step environment 90 "$OUT/environment.json" python - "$DEVICE" <<'PY'
import json, os, subprocess, sys
import peft, torch, transformers
device = sys.argv[1]
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "peft": peft.__version__, "cuda_available": torch.cuda.is_available(), "requested_device": device,
        "cpu_count": os.cpu_count()}
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

step benchmarks 130 "$OUT/benchmarks.stdout" python -m benchmarks --json --device "$DEVICE" "${MODE[@]}" \
  --only step,penalty,memory,extraction --out "$OUT/benchmarks.json"

step sandbox_build 140 "$OUT/sandbox_build.json" "${RUN[@]}" python -m asft sandbox build --out "$SANDBOX" \
  --size "$SIZE" --device "$DEVICE" --json

# The table reuses the large sandbox; if its build failed (the folder is swapped in only when
# complete) the table builds the default size there, and generation then measures that one.
TABLE_ARGS=(--json --limit 100 --max-new-tokens 32 --device "$DEVICE" --out "$TABLE" --sandbox "$SANDBOX")
step sandbox_table 110 "$OUT/sandbox_table.json" "${RUN[@]}" python -m benchmarks.sandbox_table "${TABLE_ARGS[@]}"
step table_lam100 50 "$OUT/table_lam100.json" "${RUN[@]}" python -m benchmarks.sandbox_table "${TABLE_ARGS[@]}" \
  --methods sft,asft --lam 100

SANDBOX_ARGS=()
[ -f "$SANDBOX/sandbox_manifest.json" ] && SANDBOX_ARGS=(--sandbox "$SANDBOX")
step generation 45 "$OUT/generation.stdout" python -m benchmarks --json --device "$DEVICE" "${MODE[@]}" \
  --only generation --out "$OUT/generation.json" "${SANDBOX_ARGS[@]}"

python - "$OUT" "$DRY" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, ms, limit, command = line.split("\t", 4)
    steps.append({"name": name, "rc": int(rc), "seconds": round(int(ms) / 1000, 1), "timeout_s": int(limit),
                  "timed_out": int(rc) in (124, 137), "command": command, "dry_run": dry})
(out / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")

def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None

print("steps: " + ", ".join(f"{s['name']} rc={s['rc']} {s['seconds']}s" for s in steps))
env = load("environment.json") or {}
print("device:", env.get("gpu", "cpu"), "| torch", env.get("torch"), "| transformers", env.get("transformers"))
for name in ("benchmarks.json", "generation.json"):
    report = load(name) or {}
    for key, r in report.get("results", {}).items():
        extra = {k: r[k] for k in ("sft_again_over_sft_step", "asft_lowrank_step_over_sft_step",
                                    "sft_plus_penalty_over_sft_step", "naive_with_h2d_copy_over_fast_penalty",
                                    "extract_time_over_read_time", "extract_with_checkpoint_hashing_over_read_time",
                                    "tokens_per_s", "asft_median_s", "sft_median_s") if r.get(k) is not None}
        print(f"{key}: {r['ratio']} (target {r['target']}, met {r['met']}) {json.dumps(extra)}")
    for key, err in report.get("errors", {}).items():
        print(f"{key}: ERROR {err}")
for name in ("sandbox_table.json", "table_lam100.json"):
    table = load(name)
    if not table or "cells" not in table:
        continue
    print(f"{name} (wall {table.get('wall_s')} s):")
    for row in table["reference"] + table["cells"]:
        p = "-" if row["p"] is None else f"{row['p']:g}"
        print(f"  {row['method']:9s} p={p:5s} HS {row['harmful_score']:5.1f}  utility {row['utility_mean']:5.1f}"
              f"  train_s {row['train_s']}")
failed = [s["name"] for s in steps if s["rc"]]
print(json.dumps({"out": str(out), "steps": len(steps), "failed": failed}))
PY
rm -rf "$WORK"
