"""Flows for the GPU work pool: the heavy steps as their own deployments.

The pipeline calls them with ``run_deployment`` when ``execution.train_deployment`` /
``execution.evaluate_deployment`` are set; they read and write URIs (s3:// in a team setup).
"""

from __future__ import annotations

from prefect import flow

from asft.evaluation import EvalConfig, evaluate
from asft.training import TrainConfig, train


@flow(name="train-on-gpu", log_prints=True)
def train_on_gpu(config: TrainConfig) -> dict:
    """Fine-tune one adapter (SFT, AsFT or Safe LoRA); returns the training summary."""
    return train(config)


@flow(name="evaluate-on-gpu", log_prints=True)
def evaluate_on_gpu(config: EvalConfig) -> dict:
    """Generate and judge; returns the evaluation report."""
    return evaluate(config)
