"""The evaluation job's configuration (also the Prefect flow parameters and CLI options)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from asft.evaluation.judges import JudgeConfig
from asft.evaluation.scorers import make_scorer
from asft.templates import SYSTEM_PROMPT, TemplateName


class EvalConfig(BaseModel):
    """What to evaluate, on which prompt sets, judged how, written where."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Base checkpoint folder or URI (Hugging Face folder, safetensors).")
    adapter: str | None = Field(default=None, description="Optional PEFT adapter folder or URI applied on top of the model.")
    harmful: str | None = Field(default=None, description="Harmful prompt file (JSON array or JSONL with 'instruction', optional 'input').")
    utility: dict[str, str] = Field(
        default_factory=dict,
        description="Utility sets: task -> file. Tasks: sst2, agnews, gsm8k, exact, regex:<pattern>.",
    )
    out: str = Field(description="Output folder or URI for report.json and samples.jsonl.")
    over_refusal: str | None = Field(
        default=None, description="Benign prompts that look sensitive, for the over-refusal rate: a file, or "
        "'builtin:over_refusal' (80 prompts shipped with asft). Empty: not measured.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="How answers to harmful prompts are judged.")
    extra_judges: list[JudgeConfig] = Field(
        default_factory=list, description="More judges of the same answers: their scores and agreement (Cohen's kappa) "
        "with the first judge are reported; the gate can name the one it reads.")
    template: TemplateName = Field(
        default="auto", description="Prompt template: auto (the tokenizer's chat template if it has one, else alpaca), "
        "chat, alpaca (the paper's) or llama2-chat; use the one the model was trained with.")
    system_prompt: str = Field(default=SYSTEM_PROMPT, description="System prompt of every prompt ('' for none); "
                               "default the paper's. A prompt's own system message wins.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Prompts per generation batch.")
    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Greedy decoding length limit (the paper uses 512).")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N rows of each set (the paper: 250 harmful prompts).")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    engine: Literal["hf", "vllm"] = Field(
        default="hf", description="Generation engine: hf (transformers, any device) or vllm (the optional vllm extra, "
        "CUDA only; the adapter is loaded as a vLLM LoRA). Same prompt ids, greedy decoding, judges and report.")
    shard: str | None = Field(
        default=None, pattern=r"^[0-9]+/[0-9]+$", description="Evaluate only shard I/N (I from 0): rows I, I+N, I+2N, "
        "... of every prompt set; the N shard outputs merge into the whole report (asft.evaluation.shards). "
        "Empty: every row.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype; auto = bfloat16 on GPU, float32 on CPU.")
    trust_remote_code: bool = Field(default=False, description="Allow custom model code shipped with checkpoints.")
    allow_other_base: bool = Field(
        default=False, description="Apply an adapter whose train_manifest.json names another base model (a warning, not an error).")
    progress: bool = Field(default=True, description="Show progress on stderr.")

    @field_validator("utility")
    @classmethod
    def _known_tasks(cls, utility: dict[str, str]) -> dict[str, str]:
        for task in utility:
            make_scorer(task)  # ValueError names the unknown task / bad pattern
        return utility

    @model_validator(mode="after")
    def _something_to_do(self) -> "EvalConfig":
        if self.harmful is None and not self.utility:
            raise ValueError("nothing to evaluate; give a harmful prompt file and/or utility sets")
        return self

    @field_validator("shard")
    @classmethod
    def _shard_in_range(cls, shard: str | None) -> str | None:
        if shard is not None:
            index, count = map(int, shard.split("/"))
            if not 0 <= index < count:
                raise ValueError(f"shard {shard}: I/N needs 0 <= I < N, e.g. 0/4 ... 3/4")
        return shard

    def shard_of(self) -> tuple[int, int] | None:
        """(I, N) of ``shard``, None for a whole evaluation."""
        return None if self.shard is None else tuple(map(int, self.shard.split("/")))
