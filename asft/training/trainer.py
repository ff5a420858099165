"""The training loop: LoRA on the aligned model, plus the AsFT penalty, plus Safe LoRA.

    loss = CE(batch, prompt masked) + lam * sum_l ||(I - C_l) B_l A_l||_F^2     (asft)
    loss = CE(batch, prompt masked)                                           (sft, safelora)

Differences from the reference implementation, on purpose: data are shuffled every epoch
with a seeded generator (the reference does not shuffle, and the GSM8K file puts all harmful
rows first); V is kept on the training device once instead of copied every step; LoRA
modules are paired with V by name. With sft and a direction the penalty is logged, not used.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

import torch

from asft import storage
from asft.batching import collate, seed_everything
from asft.direction import load_direction, remembered_checkpoint_sha256
from asft.errors import AsftError
from asft.modeling import load_causal_lm, load_tokenizer, pick_device, resolve_checkpoint, safetensors_header
from asft.regularizer import Anchor, build_anchors
from asft.rows import read_rows
from asft.templates import Record, encode_example
from asft.training import checkpoint as ckpt
from asft.training import safelora
from asft.training.config import TrainConfig

ADAPTER_FILE = "adapter_model.safetensors"
MANIFEST = "train_manifest.json"
SHUFFLE_NOTE = ("rows are reshuffled every epoch with torch.randperm seeded by (seed, epoch); "
                "the reference implementation does not shuffle")


def _examples(config: TrainConfig, tokenizer) -> list[dict[str, list[int]]]:
    rows = read_rows(config.data, required=("instruction", "output"))
    examples = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("input", ""), str):
            raise AsftError(f"{config.data}: row {number}: field input must be text")
        record = Record(row["instruction"], row.get("input") or "", row["output"])
        examples.append(encode_example(tokenizer, record, config.template, config.max_length))
    return examples


def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if config.precision != "fp32" and device.type != "cuda":
        raise AsftError(f"precision {config.precision} needs a GPU, this run is on {device}; use --precision fp32 or auto")
    return config.precision


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    """Module name as in the checkpoint (``model.layers.0.self_attn.q_proj``) -> peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name[len(safelora.PEFT_PREFIX):]: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer)}


def _anchors(config: TrainConfig, layers: dict[str, torch.nn.Module], device) -> tuple[dict[str, Anchor], str]:
    """Anchors for exactly the LoRA modules, on the training device, checked by name and shape."""
    direction = load_direction(config.direction, modules=list(layers))  # error if a LoRA module has no V
    anchors = {}
    for name, layer in layers.items():
        V = direction.vectors[name]
        if tuple(V.shape) != tuple(layer.get_base_layer().weight.shape):
            raise AsftError(f"direction {config.direction}: {name} has shape {list(V.shape)}, the model's weight "
                            f"{list(layer.get_base_layer().weight.shape)}; extract the direction from this model's family")
        # one module at a time: with direction_rank only the factor stays on the device
        V = V.to(device=device, dtype=getattr(torch, config.direction_dtype))
        anchors.update(build_anchors({name: V}, config.anchor, config.top_k, config.direction_rank))
    return anchors, direction.sha256


def _penalty(layers, anchors: dict[str, Anchor], scaled: bool) -> torch.Tensor:
    total = None
    for name, layer in layers.items():
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        term = anchors[name].penalty(A, B, layer.scaling["default"] if scaled else None)
        total = term if total is None else total + term
    return total


def _project_adapter_file(path, config: TrainConfig) -> dict:
    from safetensors.torch import load_file, save_file

    direction = load_direction(config.direction)
    state = load_file(path)
    projected, report = safelora.project(state, direction.vectors, mode=config.safelora_mode,
                                         tau=config.safelora_tau, k=config.safelora_k)
    save_file(projected, path, metadata={"format": "pt"})
    return {**report, "direction_sha256": direction.sha256}


def _project_existing(config: TrainConfig, started: float) -> dict:
    """method safelora with --adapter: copy the adapter folder, projecting its weights."""
    import shutil

    source = storage.materialize(config.adapter)
    if not (source / ADAPTER_FILE).exists():
        raise AsftError(f"adapter {config.adapter}: no {ADAPTER_FILE}; give a PEFT adapter folder saved with safetensors")
    safetensors_header(source / ADAPTER_FILE)  # a cut file fails with its name
    with storage.staged_dir(config.out, "adapter") as tmp:
        for file in source.iterdir():
            if file.is_file() and file.name != MANIFEST:
                shutil.copy(file, tmp / file.name)
        report = _project_adapter_file(tmp / ADAPTER_FILE, config)
        manifest = {"method": "safelora", "config": config.model_dump(mode="json"),
                    "source_adapter_sha256": storage.sha256_file(source / ADAPTER_FILE),
                    "direction_sha256": report.pop("direction_sha256"), "safelora": report,
                    "wall_seconds": round(time.perf_counter() - started, 3)}
        storage.write_json(tmp / MANIFEST, manifest)
    return {"adapter": config.out, **_headline(manifest)}


def _headline(manifest: dict) -> dict:
    keys = ("method", "final_loss", "final_penalty", "steps", "epochs_done", "wall_seconds", "tokens_per_second",
            "direction_sha256", "resumed_from_step")
    summary = {k: manifest[k] for k in keys if k in manifest}
    if "safelora" in manifest:
        summary["safelora_projected"] = len(manifest["safelora"]["projected"])
        summary["safelora_threshold"] = manifest["safelora"]["threshold"]
    return summary


def _stop_if_diverged(row: dict, config: TrainConfig) -> None:
    """A non-finite loss, penalty or objective only gets worse: stop at once, before any adapter is written."""
    figures = {name: row[name] for name in ("loss", "penalty", "objective") if row[name] is not None}
    bad = next((name for name, value in figures.items() if not math.isfinite(value)), None)
    if bad is None:
        return
    shown = ", ".join(f"{name} {value:.4g}" for name, value in figures.items())
    lam = f" or --lam (now {config.lam:g})" if config.method == "asft" else ""
    raise AsftError(f"training diverged at step {row['step']}: the {bad} is {figures[bad]} ({shown}); "
                    f"lower --lr (now {config.lr:g}){lam}; no adapter was written")


def previous_result(config: TrainConfig) -> dict | None:
    """The summary of a complete adapter at ``config.out`` trained with exactly this config, else None."""
    if not storage.is_complete(config.out, "adapter"):
        return None
    manifest = storage.read_json(storage.join(config.out, MANIFEST))
    return {"adapter": config.out, **_headline(manifest)} if manifest.get("config") == config.model_dump(mode="json") else None


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run one training job; writes the adapter folder to ``config.out`` atomically and returns
    a summary (``adapter`` folder plus the manifest's headline figures).

    ``on_step(metrics)`` is called after every optimizer step with step, epoch, lr, loss,
    penalty (None without a direction) and total.
    """
    started = time.perf_counter()
    storage.check_output(config.out, "adapter", inputs=(config.model, config.data, config.direction, config.adapter))
    if config.checkpoint_every:
        ckpt.prepare(config.checkpoints, inputs=(config.model, config.data, config.direction))
    if config.method == "safelora" and config.adapter:
        return _project_existing(config, started)
    from peft import LoraConfig, get_peft_model
    from asft.progress import progress_bar

    seed_everything(config.seed)
    device = pick_device(config.device)
    precision = _precision(config, device)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code, padding_side="right")
    examples = _examples(config, tokenizer)
    model = load_causal_lm(config.model, dtype="float32", device=str(device), trust_remote_code=config.trust_remote_code)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise AsftError(f"LoRA targets {','.join(config.target_modules)} on {config.model}: "
                        f"{str(exc).splitlines()[0]}; check --target-modules") from None
    layers = _lora_layers(model)
    anchors, direction_hash = _anchors(config, layers, device) if config.direction else ({}, None)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    step, metrics, resumed_from = 0, [], None
    if config.resume:
        done = ckpt.list_checkpoints(config.checkpoints)
        if done:
            state = ckpt.load_checkpoint(config.checkpoints, done[-1], named, optimizer)
            if state["config"] != config.resume_identity():
                raise AsftError(f"checkpoint {config.checkpoints} belongs to another run "
                                f"({ckpt.describe_mismatch(state['config'], config.resume_identity())}); "
                                "resume with the same options or remove the checkpoint folder")
            if state["grad_scaler"]:
                scaler.load_state_dict(state["grad_scaler"])
            step, metrics, resumed_from = state["step"], state["metrics"], state["step"]
            print(f"asft train: resuming from step {step} in {config.checkpoints}", file=sys.stderr)

    model.train()
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tokens, loop_started = 0, time.perf_counter()
    bar = progress_bar(total_steps, f"train {config.method}", initial=step, unit="steps")
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        lr = config.lr * config.lr_decay ** epoch  # LR x decay after each epoch
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = _epoch_order(config.seed, epoch, len(examples))
        picked = order[position * config.batch_size:(position + 1) * config.batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in picked], tokenizer.pad_token_id).items()}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        penalty = None
        if anchors:  # float32, outside autocast
            with torch.set_grad_enabled(config.method == "asft"):
                penalty = _penalty(layers, anchors, config.penalty_scaling)
        objective = loss + config.lam * penalty if config.method == "asft" else loss
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += int(batch["attention_mask"].sum())
        # one device-to-host transfer for the step's three figures
        values = torch.stack([t.detach().float() for t in (loss, objective) + (() if penalty is None else (penalty,))])
        loss_value, objective_value, *penalty_value = values.tolist()
        row = {"step": step, "total_steps": total_steps, "epoch": epoch, "lr": lr, "loss": loss_value,
               "penalty": penalty_value[0] if penalty_value else None, "objective": objective_value}
        _stop_if_diverged(row, config)
        metrics.append(row)
        if on_step:
            on_step(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", penalty="-" if penalty is None else f"{row['penalty']:.4g}")
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
            state = {"config": config.resume_identity(),
                     "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None, "metrics": metrics}
            ckpt.save_checkpoint(config.checkpoints, step, named, optimizer, state, config.keep_checkpoints)
    bar.close()
    loop_seconds = time.perf_counter() - loop_started

    with storage.staged_dir(config.out, "adapter") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        storage.write_jsonl(tmp / "metrics.jsonl", metrics)
        manifest = {
            "method": config.method,
            "config": config.model_dump(mode="json"),
            "precision": precision,
            "device": str(device),
            "data_sha256": storage.sha256_bytes(storage.read_bytes(config.data)),
            "examples": len(examples),
            "model_sha256": remembered_checkpoint_sha256(resolve_checkpoint(config.model)),
            "direction_sha256": direction_hash,
            "steps": step,
            "epochs_done": round(step / steps_per_epoch, 3),
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "final_penalty": metrics[-1]["penalty"] if metrics else None,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "tokens_per_second": round(tokens / loop_seconds, 1) if loop_seconds > 0 and tokens else None,
            "resumed_from_step": resumed_from,
            "shuffle": SHUFFLE_NOTE,
        }
        if config.method == "safelora":
            report = _project_adapter_file(tmp / ADAPTER_FILE, config)
            report.pop("direction_sha256")
            manifest["safelora"] = report
        storage.write_json(tmp / MANIFEST, manifest)
    if config.checkpoint_every:
        ckpt.remove_all(config.checkpoints)  # the finished adapter supersedes them
    return {"adapter": config.out, **_headline(manifest)}
