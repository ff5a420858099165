"""``TrainConfig``: one config for SFT, AsFT, Safe LoRA, SafeInstr and Lisa runs (also the
Prefect form and the YAML/CLI config). Unset hyper-parameters come from the preset."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from asft.architectures import check_target_fields
from asft.templates import SYSTEM_PROMPT, TemplateName

# The paper's setup (arXiv 2506.08473, reference hyper-parameters) is the field defaults.
# The sandbox preset suits the offline sandbox world: one epoch at a high LR is enough for
# plain SFT on the p=0.1 mixture to break the aligned model's refusals (measured: tiny
# sandbox 13 steps, harmful score 62.5 -> 100; default sandbox 63 steps, 0 -> 100).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "sandbox": {"lr": 5e-3, "epochs": 1, "max_length": 96, "batch_size": 16},
}
PRESET_FIELDS = frozenset(key for preset in PRESETS.values() for key in preset)

# Fields that may change between an interrupted run and its --resume.
RESUME_FREE_FIELDS = ("resume", "checkpoint_every", "keep_checkpoints", "device")


class TrainConfig(BaseModel):
    """A LoRA fine-tuning run: plain SFT, AsFT (LoRA + lam * anchor penalty), Safe LoRA, SafeInstr or Lisa."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Aligned checkpoint to fine-tune (HF folder with safetensors; path or URI)")
    out: str = Field(description="Output folder or URI: PEFT adapter, metrics.jsonl, train_manifest.json")
    data: str | None = Field(None, description="Training rows, read like `asft screen` reads them (Alpaca, chat "
                             "messages, ShareGPT, prompt/response; JSON, JSONL, CSV, Parquet; path or URI)")
    method: Literal["sft", "asft", "safelora", "safeinstr", "lisa"] = Field(
        "asft", description="sft: plain LoRA; asft: LoRA + lam * sum of anchor penalties; "
        "safelora: SFT (or --adapter) then Safe LoRA's post-hoc projection; safeinstr: SFT with refusal rows "
        "(safety_data) mixed in; lisa: steps alternating between alignment_data and data, with a proximal term")
    direction: str | None = Field(None, description="Alignment direction folder from `asft direction` "
                                  "(needed by asft and safelora; with sft the penalty is only logged)")
    adapter: str | None = Field(None, description="safelora only: project this existing PEFT adapter instead of training")
    preset: Literal["paper", "sandbox"] = Field("paper", description="Defaults for unset hyper-parameters")

    lam: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="Weight of the AsFT penalty (summed over modules)")
    anchor: Literal["fro", "projector"] = Field(
        "fro", description="fro: the paper's C = V V^T / ||V||_F; projector: P = U_k U_k^T (top-k left singular vectors)")
    top_k: int = Field(8, ge=1, le=4096, description="k of the projector anchor")
    penalty_scaling: bool = Field(False, description="Include LoRA's alpha/r in the penalised update (the reference does not)")
    direction_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype V is kept in on the training device (the penalty is float32 either way)")
    direction_rank: int | None = Field(
        None, ge=1, le=65536, description="fro anchor: keep only L = U_k S_k (out, k) of each V on the device, "
        "in/k times fewer bytes (C becomes its top-k eigen-truncation); None keeps V exactly")

    anchor_compute: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype of the anchor products V^T B and V (V^T B): bf16 (fp32 accumulation on a GPU) is "
        "faster on a GPU, error ~1e-3 relative on the penalty; the final sum is float32 either way")
    anchor_batching: bool = Field(False, description="Compute the penalty of same-shaped modules as one batched "
                                  "product over their stacked V (fewer, larger kernels on a GPU; same value)")

    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, allow_inf_nan=False, description="LoRA alpha (scaling alpha/r)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input")
    target_modules: list[str] | None = Field(
        None, description="LoRA target module-name suffixes; unset: the model type's preset, the attention query and "
        "value (q_proj,v_proj; qkv_proj for Phi-3; query_key_value for GPT-NeoX, Falcon, Bloom; c_attn for GPT-2)")
    target_regex: str | None = Field(
        None, description="Regular expression the full module name must match (as `asft direction --target-regex`); "
        "replaces target_modules")
    fused_qkv_anchor: Literal["whole", "qv"] = Field(
        "whole", description="Fused q/k/v targets (qkv_proj, query_key_value, c_attn): whole anchors the whole fused "
        "matrix with one C; qv anchors its q rows and its v rows, each with its own C from those rows of V (as the "
        "paper anchors q_proj and v_proj), and leaves the k rows trained but unpenalised; Safe LoRA uses the same anchor")

    lr: float = Field(5e-5, gt=0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="AdamW weight decay")
    lr_decay: float = Field(0.85, gt=0.0, le=1.0, description="LR multiplier applied after each epoch")
    epochs: int = Field(10, ge=1, le=1000, description="Passes over the data")
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per optimizer step")
    max_length: int = Field(512, ge=8, le=131072, description="Tokens per example (prompt + answer), truncated")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (smoke runs, benchmarks)")
    seed: int = Field(42, ge=0, description="Seed for LoRA init, dropout and the per-epoch shuffle")
    template: TemplateName = Field(
        "auto", description="Prompt template: auto (the tokenizer's chat template if it has one, else alpaca), chat, "
        "alpaca (the paper's) or llama2-chat; only assistant turns are learned")
    system_prompt: str = Field(SYSTEM_PROMPT, description="System prompt of every conversation without its own "
                               "('' for none); default the paper's")

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, else fp32; the penalty is always float32")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...; under torchrun or "
                        "accelerate each rank takes cuda:LOCAL_RANK")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Under torchrun/accelerate with several processes: ddp replicates the model on each rank; "
        "fsdp (FSDP2) shards the base weights over the ranks (one decoder layer gathered at a time; no checkpoints)")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base weights in 4-bit NF4 (bitsandbytes, CUDA only, "
                               "the gpu extra); LoRA, V and the penalty stay in their own dtypes")
    load_in_8bit: bool = Field(False, description="Load the base weights in 8-bit (bitsandbytes, CUDA only)")
    gradient_checkpointing: bool = Field(False, description="Recompute each layer's activations in the backward "
                                         "pass: less activation memory, about one more forward of time")
    trust_remote_code: bool = Field(False, description="Run custom model code shipped with the checkpoint")

    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0: never)")
    checkpoint_dir: str | None = Field(None, description="Where checkpoints go (default: <out>.checkpoints)")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep")
    resume: bool = Field(False, description="Continue from the latest checkpoint in checkpoint_dir, if any")

    safety_data: str | None = Field(None, description="safeinstr: refusal rows (harmful prompt + refusal), read "
                                    "like data; a seeded sample of them is mixed into the training set")
    safety_share: float = Field(0.1, gt=0.0, lt=1.0, description="safeinstr: share of the final training set that is "
                                "safety rows (k = round(share / (1 - share) x the user's rows) are drawn)")
    alignment_data: str | None = Field(None, description="lisa: alignment rows (harmful prompt + refusal, or any "
                                       "aligned behaviour), read like data; its phases train on them")
    lisa_alignment_steps: int = Field(100, ge=1, description="lisa: optimizer steps on alignment_data per phase "
                                      "(the reference's align_step)")
    lisa_finetune_steps: int = Field(900, ge=1, description="lisa: optimizer steps on data per phase "
                                     "(the reference's finetune_step)")
    lisa_rho: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="lisa: weight of the proximal term "
                            "rho/2 ||theta - theta_switch||^2 to the LoRA weights at the last phase switch")

    safelora_mode: Literal["threshold", "number"] = Field(
        "threshold", description="threshold: project modules with cos <= tau; number: the K modules of lowest cos")
    safelora_tau: float = Field(0.5, ge=-1.0, le=1.0, description="Safe LoRA cosine threshold")
    safelora_k: int = Field(10, ge=1, description="Safe LoRA number mode: how many modules to project")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            preset = PRESETS.get(data.get("preset") or "paper", {})
            # None means "from the preset" for any field a preset can fill (the pipeline's form sends it)
            data = {k: v for k, v in data.items() if v is not None or k not in PRESET_FIELDS}
            for key, value in preset.items():
                data.setdefault(key, value)
        return data

    @model_validator(mode="after")
    def _check_method(self) -> "TrainConfig":
        if self.method in ("asft", "safelora") and not self.direction:
            raise ValueError(f"method {self.method} needs direction (the output folder of `asft direction`)")
        if self.adapter and self.method != "safelora":
            raise ValueError("adapter is only used by method safelora (projecting an existing adapter)")
        if not self.adapter and not self.data:
            raise ValueError("data is required (a JSON/JSONL file of instruction/input/output rows)")
        return self

    @model_validator(mode="after")
    def _check_method_data(self) -> "TrainConfig":
        for method, field, what in (("safeinstr", "safety_data", "refusal rows to mix in"),
                                    ("lisa", "alignment_data", "alignment rows for its alignment phases")):
            if self.method == method and not getattr(self, field):
                raise ValueError(f"method {method} needs {field} ({what}; the sandbox's data/safety_refusals.jsonl)")
            if getattr(self, field) and self.method != method:
                raise ValueError(f"{field} is only used by method {method}; drop it or use --method {method}")
        if self.method == "lisa" and self.checkpoint_every:
            raise ValueError("method lisa writes no resumable checkpoints yet (they would lack the weights of the "
                             "last phase switch); drop checkpoint_every")
        return self

    @model_validator(mode="after")
    def _check_quantization(self) -> "TrainConfig":
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit exclude each other; choose one")
        return self

    @model_validator(mode="after")
    def _check_targets(self) -> "TrainConfig":
        check_target_fields(self.target_modules, self.target_regex)
        return self

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_dir or self.out.rstrip("/") + ".checkpoints"

    def resume_identity(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed."""
        return self.model_dump(mode="json", exclude=set(RESUME_FREE_FIELDS))
