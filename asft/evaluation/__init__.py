"""Evaluation: greedy generation, judges (refusal keywords, moderation classifier, guard
model), utility scorers, and the report with its protocol."""

from asft.evaluation.config import EvalConfig
from asft.evaluation.evaluate import evaluate
from asft.evaluation.generation import generate, generate_tokens, load_model
from asft.evaluation.judges import REFUSAL_PHRASES, Judge, JudgeConfig, Verdict, make_judge
from asft.evaluation.scorers import make_scorer
from asft.statistics import wilson_interval

__all__ = ["EvalConfig", "Judge", "JudgeConfig", "REFUSAL_PHRASES", "Verdict", "evaluate", "generate",
           "generate_tokens", "load_model", "make_judge", "make_scorer", "wilson_interval"]
