"""LoRA fine-tuning: plain SFT, AsFT (anchored to the alignment direction) and Safe LoRA."""

from asft.training.config import PRESETS, TrainConfig
from asft.training.safelora import project as safelora_project
from asft.training.trainer import train

__all__ = ["PRESETS", "TrainConfig", "safelora_project", "train"]
