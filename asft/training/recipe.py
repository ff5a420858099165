"""The LoRA fine-tuning recipe: setup -> resume -> loop -> save, driven by one ``TrainConfig``.

    loss = CE(batch, prompt masked) + lam * sum_l ||(I - C_l) B_l A_l||_F^2     (asft)
    loss = CE(batch, prompt masked) + rho/2 ||theta - theta_switch||^2          (lisa)
    loss = CE(batch, prompt masked)                                (sft, safelora, safeinstr)

The method (``asft.training.methods``) decides the rows and their order, the objective and the
post-processing of the saved adapter; the loop (``asft.training.loop``) is shared with the
sandbox builder.

Differences from the reference implementation, on purpose: data are shuffled every epoch
with a seeded generator (the reference does not shuffle, and the GSM8K file puts all harmful
rows first); V is kept on the training device once instead of copied every step; LoRA
modules are paired with V by name. With sft and a direction the penalty is logged, not used.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from typing import Callable

import torch

from asft import storage
from asft.errors import AsftError
from asft.regularizer import group_anchors
from asft.seeding import seed_everything
from asft.training import checkpoint as ckpt
from asft.training.adapter import MANIFEST
from asft.training.config import TrainConfig
from asft.training.distributed import ShardedLoop, World, check_batch, check_parallel, gathered, wrap_model
from asft.training.loop import Loop, StepResult, Terms
from asft.training.lora import add_lora, load_anchors, lora_layers, penalty, targets_record
from asft.training.memory_plan import describe_plan, memory_plan
from asft.training.methods import method_for

SHUFFLE_NOTE = ("rows are reshuffled every epoch with torch.randperm seeded by (seed, epoch); "
                "the reference implementation does not shuffle")


def read_examples(config: TrainConfig, tokenizer) -> tuple[list[dict[str, list[int]]], str, str]:
    """The training rows encoded with the prompt template (loss on assistant turns only), the
    template resolved for this tokenizer, and the data's content hash. The rows are read by
    ingestion (every source and schema ``asft screen`` takes); a malformed row is an error."""
    from asft.templates import resolve_template

    template = resolve_template(config.template, tokenizer)  # a bad template fails before the data is read
    examples, sha256 = encode_rows(config.data, config, tokenizer, template)
    return examples, template, sha256


def encode_rows(source: str, config: TrainConfig, tokenizer, template: str) -> tuple[list[dict[str, list[int]]], str]:
    """The rows of ``source`` (any source and schema ingestion reads) encoded with ``template``; their content hash."""
    from asft.data.ingest import IngestConfig, ingest
    from asft.templates import encode_example

    data = ingest(source, IngestConfig(on_malformed="fail"))
    examples = [encode_example(tokenizer, row.record, template, config.max_length, system_prompt=config.system_prompt)
                for row in data.rows]
    return examples, data.sha256


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if config.precision != "fp32" and device.type != "cuda":
        raise AsftError(f"precision {config.precision} needs a GPU, this run is on {device}; use --precision fp32 or auto")
    return config.precision


def stop_if_diverged(row: dict, hint: str) -> None:
    """A non-finite loss, penalty or objective only gets worse: stop at once, before any adapter is written."""
    figures = {name: row[name] for name in ("loss", "penalty", "objective") if row[name] is not None}
    bad = next((name for name, value in figures.items() if not math.isfinite(value)), None)
    if bad is None:
        return
    shown = ", ".join(f"{name} {value:.4g}" for name, value in figures.items())
    raise AsftError(f"training diverged at step {row['step']}: the {bad} is {figures[bad]} ({shown}); "
                    f"{hint}; no adapter was written")


def quantization_config(config: TrainConfig, device: torch.device):
    """transformers' BitsAndBytesConfig for a 4-/8-bit base (QLoRA), or None; one clear error
    where bitsandbytes cannot run (it needs a CUDA GPU and the ``gpu`` extra)."""
    if not (config.load_in_4bit or config.load_in_8bit):
        return None
    option = "--load-in-4bit" if config.load_in_4bit else "--load-in-8bit"
    if device.type != "cuda":
        raise AsftError(f"{option} needs a CUDA GPU (bitsandbytes), this run is on {device}; drop {option} on a CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AsftError(f"{option} needs bitsandbytes; install the GPU extra: pip install 'asft[gpu]'") from None
    from transformers import BitsAndBytesConfig

    if config.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


class LoraRecipe:
    """One LoRA fine-tuning run. ``run()`` is setup, resume, the loop and save; each piece is
    a method so that a new training method or a distributed launcher overrides only its part."""

    def __init__(self, config: TrainConfig, on_step: Callable[[dict], None] | None = None,
                 started: float | None = None, world: World | None = None):
        self.config, self.on_step, self.world = config, on_step, world or World()
        self.method = method_for(config)
        self.started = time.perf_counter() if started is None else started
        self.step, self.metrics, self.resumed_from, self.tokens = 0, [], None, 0

    def run(self) -> dict:
        """Train and write the adapter folder; returns its manifest."""
        self.setup()
        self.resume()
        loop_started = time.perf_counter()
        self.step = self.loop().run(self.total_steps, start=self.step, label=f"train {self.config.method}")
        manifest = self.manifest(time.perf_counter() - loop_started)
        trained = gathered(self.named)  # every rank takes part when FSDP holds shards
        if self.world.is_main:
            self.save(manifest, trained)
            if self.config.checkpoint_every:
                ckpt.remove_all(self.config.checkpoints)  # the finished adapter supersedes them
        self.world.barrier()  # every rank returns once the adapter is written
        return manifest

    # --- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        """Seed, device, tokenizer and data (the method's rows), the model with LoRA, anchors, optimizer,
        schedule, the method's starting state."""
        from asft.modeling import load_tokenizer, pick_device

        config = self.config
        seed_everything(config.seed)
        self.device = self.world.device(pick_device(config.device))
        self.precision = resolve_precision(config, self.device)
        self.quantization = quantization_config(config, self.device)  # before any model loads
        check_batch(config.batch_size, self.world)
        check_parallel(config, self.world)
        self.tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code, padding_side="right")
        self.examples, self.template, self.data_sha256 = read_examples(config, self.tokenizer)
        read = partial(encode_rows, config=config, tokenizer=self.tokenizer, template=self.template)
        self.examples, self.sampler = self.method.training_rows(self.examples, read)  # before any model loads
        self.setup_model()
        # DDP wraps the model; FSDP shards it in place (before the optimizer sees its parameters)
        self.trained = wrap_model(self.model, self.world, self.device, config.parallel)
        self.named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(list(self.named.values()), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.total_steps = self.sampler.steps(config.epochs)
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.memory_plan = memory_plan(self.model, self.anchors, config, self.examples, self.precision, self.world)
        if self.world.is_main:
            print(describe_plan(self.memory_plan), file=sys.stderr)
        self.method.start(self.named)  # a method with state of its own (Lisa) writes no checkpoints to resume

    def setup_model(self) -> None:
        """The model to fine-tune, wrapped with LoRA, and the anchors of its LoRA layers."""
        from asft.modeling import load_causal_lm

        config = self.config
        model = load_causal_lm(config.model, dtype="float32", device=str(self.device),
                               trust_remote_code=config.trust_remote_code, quantization=self.quantization)
        if self.quantization is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif config.gradient_checkpointing:
            # non-reentrant: needs no input that requires grad, and replays dropout's RNG exactly
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = add_lora(model, config)
        self.layers = lora_layers(self.model)
        self.anchors, self.direction_sha256 = (load_anchors(config, self.layers, self.device)
                                               if config.direction else ({}, None))
        self.anchor_groups = group_anchors(self.anchors) if config.anchor_batching else None

    def resume(self) -> None:
        """With ``resume``, continue from the latest checkpoint of this same run, if any."""
        config = self.config
        done = ckpt.list_checkpoints(config.checkpoints) if config.resume else []
        if not done:
            return
        state = ckpt.load_checkpoint(config.checkpoints, done[-1], self.named, self.optimizer)
        if state["config"] != config.resume_identity():
            raise AsftError(f"checkpoint {config.checkpoints} belongs to another run "
                            f"({ckpt.describe_mismatch(state['config'], config.resume_identity())}); "
                            "resume with the same options or remove the checkpoint folder")
        if state["grad_scaler"]:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step, self.metrics, self.resumed_from = state["step"], state["metrics"], state["step"]
        print(f"asft train: resuming from step {self.step} in {config.checkpoints}", file=sys.stderr)

    # --- the loop ---------------------------------------------------------------------

    def loop(self) -> Loop:
        config, sampler = self.config, self.sampler
        hooks = [self.log_step, *self.method.hooks()]
        hooks += [self.save_checkpoint] if config.checkpoint_every and self.world.is_main else []
        common = {"lr_at": lambda step: config.lr * config.lr_decay ** sampler.epoch(step),  # x decay per epoch
                  "device": self.device, "objective": self.objective, "scaler": self.scaler, "hooks": hooks,
                  "autocast_dtype": {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision),
                  "show_progress": self.world.is_main}
        kind, extra = (ShardedLoop, {"world": self.world}) if self.world.size > 1 else (Loop, {})
        return kind(self.trained, self.optimizer, self.examples, self.tokenizer.pad_token_id, self.sampler,
                    **common, **extra)

    def objective(self, loss: torch.Tensor, batch: dict) -> Terms:
        """The method's objective from the loss and, with a direction, the anchor penalty (float32)."""
        value = None
        if self.anchors:
            with torch.set_grad_enabled(self.method.penalty_has_grad):
                value = penalty(self.layers, self.anchors, self.config.penalty_scaling, self.anchor_groups)
        return Terms(loss=loss, objective=self.method.objective(loss, value), penalty=value)

    def log_step(self, result: StepResult) -> None:
        """The step's metrics row (one device-to-host transfer), divergence stop, ``on_step``."""
        terms = result.terms
        self.tokens += result.tokens
        values = torch.stack([t.detach().float() for t in (terms.loss, terms.objective)
                              + (() if terms.penalty is None else (terms.penalty,))])
        loss_value, objective_value, *penalty_value = values.tolist()
        row = {"step": result.step, "total_steps": result.total_steps, "epoch": result.epoch,
               **self.method.step_record(result.step - 1), "lr": result.lr,
               "loss": loss_value, "penalty": penalty_value[0] if penalty_value else None,
               "objective": objective_value}
        stop_if_diverged(row, self.method.divergence_hint())
        self.metrics.append(row)
        if self.on_step and self.world.is_main:
            self.on_step(row)
        result.postfix.update(loss=f"{row['loss']:.4f}", penalty="-" if terms.penalty is None else f"{row['penalty']:.4g}")

    def save_checkpoint(self, result: StepResult) -> None:
        config = self.config
        if result.step % config.checkpoint_every == 0 and result.step < result.total_steps:
            state = {"config": config.resume_identity(),
                     "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     "metrics": self.metrics}
            ckpt.save_checkpoint(config.checkpoints, result.step, self.named, self.optimizer, state,
                                 config.keep_checkpoints)

    # --- save -------------------------------------------------------------------------

    def save(self, manifest: dict, trained: dict[str, torch.Tensor]) -> None:
        """Write the adapter folder atomically: PEFT adapter (the ``trained`` weights), tokenizer,
        metrics, ``manifest`` (completed by the method's post-processing)."""
        with storage.staged_dir(self.config.out, "adapter") as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True, state_dict=trained)
            self.tokenizer.save_pretrained(tmp)
            storage.write_jsonl(tmp / "metrics.jsonl", self.metrics)
            manifest.update(self.method.after_save(tmp))
            storage.write_json(tmp / MANIFEST, manifest)

    def manifest(self, loop_seconds: float) -> dict:
        from asft.io.hashing import remembered_checkpoint_sha256
        from asft.modeling import resolve_checkpoint

        config, metrics, tokens = self.config, self.metrics, self.tokens
        return {
            "method": config.method,
            "config": config.model_dump(mode="json"),
            "precision": self.precision,
            "device": str(self.device),
            "template": self.template,
            "data_sha256": self.data_sha256,
            "examples": len(self.examples),
            "model_sha256": remembered_checkpoint_sha256(resolve_checkpoint(config.model)),
            "direction_sha256": self.direction_sha256,
            "targets": targets_record(self.model, config),
            "steps": self.step,
            "epochs_done": round(self.sampler.epochs_done(self.step), 3),
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "final_penalty": metrics[-1]["penalty"] if metrics else None,
            "wall_seconds": round(time.perf_counter() - self.started, 3),
            "tokens_per_second": round(tokens / loop_seconds, 1) if loop_seconds > 0 and tokens else None,
            "resumed_from_step": self.resumed_from,
            "shuffle": SHUFFLE_NOTE,
            "distributed": {**self.world.record(), "parallel": config.parallel if self.world.size > 1 else None},
            "memory_plan": self.memory_plan,
            **self.method.record(self.step),
        }
