"""LoRA fine-tuning: plain SFT, AsFT (anchored to the alignment direction) and Safe LoRA.

``train(config)`` runs ``recipe.LoraRecipe`` (setup / resume / loop / save) with the method of
``methods.METHODS``; ``loop.Loop`` is the optimizer loop, shared with the sandbox builder.
"""

from asft.training.config import PRESETS, TrainConfig
from asft.training.safelora import project as safelora_project
from asft.training.trainer import train

__all__ = ["PRESETS", "TrainConfig", "safelora_project", "train"]
