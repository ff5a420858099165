"""``ddp_2_over_1_tokens_per_second``: ``asft train`` (AsFT) launched by ``torchrun
--nproc_per_node 2`` vs one process, same checkpoint, data and global batch: training tokens
per second of the loop (the manifests' ``tokens_per_second``, process start and model loading
left out), launches alternated. On a CPU the two ranks split the cores (each gets half the
threads the one process has) and share the memory bandwidth; on CUDA each rank has a GPU.

    python -m benchmarks.ddp [--quick | --tiny] [--device cpu|cuda] [--json] [--out FILE]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.timing import result
from benchmarks.training_workspace import build, main_for, shapes_for

RANKS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(fields: dict, out: Path, ranks: int, threads: int) -> dict:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                 "--master_addr", "127.0.0.1", "--master_port", str(_free_port())] if ranks > 1 else [sys.executable])
    options = [arg for key, value in fields.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*launcher, "-m", "asft", "train", *options, "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"asft train with {ranks} process(es) failed: {done.stderr[-2000:]}")
    return json.loads((out / "train_manifest.json").read_text())


def run(mode: str, device: torch.device) -> dict:
    s = shapes_for(mode, device)
    if device.type == "cuda" and torch.cuda.device_count() < RANKS:
        return {"name": "ddp_2_over_1_tokens_per_second", "ratio": None, "target": None, "met": None,
                "skipped": f"needs {RANKS} GPUs, this machine has {torch.cuda.device_count()}", "device": str(device)}
    cores = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or RANKS)  # the thread budget of the run
    threads = {1: cores, RANKS: max(1, cores // RANKS)} if device.type == "cpu" else {1: 4, RANKS: 4}
    speeds: dict[int, list[float]] = {1: [], RANKS: []}
    with tempfile.TemporaryDirectory(prefix="asft-bench-ddp-") as tmp:
        root = Path(tmp)
        fields = {**build(root, s, device), "method": "asft", "device": "cuda" if device.type == "cuda" else "cpu"}
        for repeat in range(s["repeats"]):
            for ranks in (1, RANKS):
                manifest = _train(fields, root / f"out-{ranks}-{repeat}", ranks, threads[ranks])
                speeds[ranks].append(manifest["tokens_per_second"])
    ratio = statistics.median(d / o for d, o in zip(speeds[RANKS], speeds[1], strict=True))
    return result(
        "ddp_2_over_1_tokens_per_second", ratio, None, None,
        ratio_method="median over launches of 2-rank / 1-process loop tokens per second (launches alternated)",
        tokens_per_second={str(k): [round(x, 1) for x in v] for k, v in speeds.items()},
        threads_per_process={str(k): v for k, v in threads.items()},
        shapes={k: s[k] for k in ("hidden", "intermediate", "layers", "heads", "batch", "words", "steps")},
        backend="nccl" if device.type == "cuda" else "gloo", device=str(device), repeats=s["repeats"])


main = main_for(run, "python -m benchmarks.ddp")

if __name__ == "__main__":
    raise SystemExit(main())
