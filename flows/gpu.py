"""Flows for the GPU work pool: the heavy steps as their own deployments.

The pipeline calls them with ``run_deployment`` when ``execution.train_deployment`` /
``execution.evaluate_deployment`` are set; they read and write URIs (s3:// in a team setup).
A training run on ``num_gpus`` > 1 GPUs (the job asks the pool for that many: the
``num_gpus`` job variable) is started under torchrun, one process per GPU; with one GPU it
runs in this process.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from prefect import flow

from asft.errors import AsftError
from asft.evaluation import EvalConfig, evaluate
from asft.training import TrainConfig, train

ERROR_LINES = 6  # at most, of the training processes' stderr, in the error a failed torchrun run raises
# what the processes print when they fail: `asft: error: ...` (bad input), or an exception's last line
ERROR_LINE = re.compile(r"^(asft: error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt): )")


def torchrun_command(config_file: str | Path, num_gpus: int) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun) starting ``asft train --config FILE`` once
    per GPU; ``--standalone``: a rendezvous of its own on a free port, so two jobs on one
    host do not meet."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_gpus),
            "-m", "asft", "train", "--config", str(config_file)]


def _failure(lines: list[str], status: int, num_gpus: int) -> AsftError:
    """One line: the exit status and what the processes said went wrong (each distinct error
    line once: every rank says it), not torchrun's own traceback around their exit."""
    said = [line.strip() for line in lines if ERROR_LINE.match(line) and "ChildFailedError" not in line]
    if not said:
        said = [line.strip() for line in lines if line.strip()][-ERROR_LINES:] or ["no output"]
    return AsftError(f"training under torchrun ({num_gpus} processes) exited with status {status}: "
                     + " | ".join(list(dict.fromkeys(said))[-ERROR_LINES:]))


def train_distributed(config: TrainConfig, num_gpus: int) -> dict:
    """Train ``config`` data-parallel on ``num_gpus`` processes; returns the training summary
    (as :func:`train` does). The processes' stderr is passed through as it comes."""
    from asft.training.trainer import previous_result

    with tempfile.TemporaryDirectory(prefix="asft-torchrun-") as tmp:
        config_file = Path(tmp) / "train.json"
        config_file.write_text(json.dumps(config.model_dump(mode="json")))
        command = torchrun_command(config_file, num_gpus)
        print(f"training on {num_gpus} processes: {shlex.join(command)}", flush=True)
        tail: deque[str] = deque(maxlen=2000)  # a rank's traceback fits
        with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace") as process:
            for line in process.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
        if process.returncode:
            raise _failure(list(tail), process.returncode, num_gpus)
    summary = previous_result(config)
    if summary is None:
        raise AsftError(f"training under torchrun ({num_gpus} processes) exited 0 but {config.out} holds no complete "
                        "adapter trained with this config; see the processes' output above")
    return summary


def train_on_gpus(config: TrainConfig, num_gpus: int) -> dict:
    """In this process on one GPU, under torchrun on more."""
    if num_gpus < 1:
        raise AsftError(f"num_gpus {num_gpus}: give 1 or more GPUs")
    return train(config) if num_gpus == 1 else train_distributed(config, num_gpus)


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(config: TrainConfig, num_gpus: int = 1) -> dict:
    """Fine-tune one adapter (SFT, AsFT or Safe LoRA) on num_gpus GPUs (more than 1:
    data-parallel under torchrun); returns the training summary."""
    return train_on_gpus(config, num_gpus)


@flow(name="evaluate-on-gpu", log_prints=True)
def evaluate_on_gpu(config: EvalConfig) -> dict:
    """Generate and judge (the whole evaluation or one shard of it); returns its report."""
    return evaluate(config)
