#!/usr/bin/env bash
# GPU check: one NVIDIA GPU, no network, under 8 minutes. Usage: benchmarks/gpu_check.sh OUT_DIR
#   1 environment     GPU, driver, versions                       -> OUT_DIR/environment.json
#   2 sandbox_build   asft sandbox build --size large (on CUDA)    -> OUT_DIR/sandbox_build.json
#   3 benchmarks      python -m benchmarks (full: 7B module shapes on CUDA, generation on
#                     the large sandbox)                           -> OUT_DIR/benchmarks.json
#   4 sandbox_table   python -m benchmarks.sandbox_table --json    -> OUT_DIR/sandbox_table.json
# Every step is time-boxed (timeout); a failing step is recorded and the next one still runs.
# OUT_DIR/steps.json lists each step's command, exit status and seconds; OUT_DIR/<step>.log its stderr.
# ASFT_GPU_CHECK_DRY_RUN=1: CPU plumbing check (tiny benchmarks subset, sandbox steps only echoed).
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
DRY=${ASFT_GPU_CHECK_DRY_RUN:-0}
SANDBOX="$OUT/sandbox-large"
: > "$OUT/steps.tsv"

step() {  # step NAME SECONDS OUTPUT_FILE COMMAND...
  local name=$1 limit=$2 output=$3; shift 3
  local start rc
  start=$(date +%s.%N)
  echo "[gpu_check] $name: $*" >&2
  timeout --kill-after=10 "$limit" "$@" > "$output" 2> "$OUT/$name.log"
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $start" | bc)" "$limit" "$*" >> "$OUT/steps.tsv"
  echo "[gpu_check] $name: exit $rc" >&2
}

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; BENCH_ARGS=(--tiny --only penalty,memory); SIZE=tiny; RUN=(echo dry-run:)
else
  DEVICE=cuda; BENCH_ARGS=(); SIZE=large; RUN=()
fi

step environment 60 "$OUT/environment.json" python - "$DEVICE" <<'PY'
import json, subprocess, sys
import peft, torch, transformers
device = sys.argv[1]
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "peft": peft.__version__, "cuda_available": torch.cuda.is_available(), "requested_device": device}
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

step sandbox_build 170 "$OUT/sandbox_build.json" "${RUN[@]}" asft sandbox build --out "$SANDBOX" --size "$SIZE" --device "$DEVICE" --json

SANDBOX_ARGS=()
[ -f "$SANDBOX/sandbox_manifest.json" ] && SANDBOX_ARGS=(--sandbox "$SANDBOX")
step benchmarks 220 "$OUT/benchmarks.stdout" python -m benchmarks --json --device "$DEVICE" \
  --out "$OUT/benchmarks.json" "${BENCH_ARGS[@]}" "${SANDBOX_ARGS[@]}"

# 12 fine-tunes + 14 evaluations in the time box: 100 prompts per set, 32 new tokens.
TABLE_ARGS=(--json --limit 100 --max-new-tokens 32)
if python -m benchmarks.sandbox_table --help > "$OUT/sandbox_table.help" 2>&1; then
  grep -q -- "--sandbox" "$OUT/sandbox_table.help" && [ ${#SANDBOX_ARGS[@]} -gt 0 ] && TABLE_ARGS+=("${SANDBOX_ARGS[@]}")
  grep -q -- "--device" "$OUT/sandbox_table.help" && TABLE_ARGS+=(--device "$DEVICE")
fi
step sandbox_table 120 "$OUT/sandbox_table.json" "${RUN[@]}" python -m benchmarks.sandbox_table "${TABLE_ARGS[@]}"

python - "$OUT" "$DRY" <<'PY'
import json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, limit, command = line.split("\t", 4)
    steps.append({"name": name, "rc": int(rc), "seconds": round(float(seconds), 1), "timeout_s": int(limit),
                  "timed_out": int(rc) in (124, 137), "command": command, "dry_run": dry})
(out / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")
failed = [s["name"] for s in steps if s["rc"]]
print(json.dumps({"out": str(out), "steps": len(steps), "failed": failed}))
PY
