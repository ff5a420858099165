"""``sft_step_over_trainer_step``: our LoRA SFT step (the recipe's loop: batch, forward,
backward, AdamW, metrics row, progress) vs the plain peft + transformers ``Trainer`` step on the
same checkpoint, LoRA settings, examples, batches (in the same order) and optimizer; and the
AsFT step (lam 1, dense float32 V) against the same Trainer step.

The three arms run interleaved, one step each in turn: a ``TrainerCallback`` runs our two
steps at the end of each Trainer step, so the Trainer's time per step is from one of its step
ends to the next, less our steps in between (its batch fetch and collate included, as ours are).

    python -m benchmarks.trainer_compare [--quick | --tiny] [--device cpu|cuda] [--json] [--out FILE]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.timing import median, paired_ratio, result, synchronize
from benchmarks.training_workspace import build, main_for, recipe_stepper, shapes_for


def _trainer(fields: dict, recipe, root: Path, device: torch.device, between_steps):
    """The plain peft + Trainer run over the recipe's examples in the recipe's batch order."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from asft.modeling import load_causal_lm
    from asft.training.lora import add_lora

    model = add_lora(load_causal_lm(fields["model"], device=str(device)), recipe.config)
    order = [i for step in range(recipe.total_steps) for i in recipe.sampler.indices(step)]

    class Interleave(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            between_steps(state.global_step - 1)

    args = TrainingArguments(
        output_dir=str(root / "trainer"), per_device_train_batch_size=recipe.config.batch_size,
        max_steps=recipe.total_steps, learning_rate=recipe.config.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch", logging_strategy="no", save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, use_cpu=device.type == "cpu",
        bf16=recipe.precision == "bf16", train_sampling_strategy="sequential", remove_unused_columns=False, seed=0)
    collator = DataCollatorForSeq2Seq(recipe.tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=[recipe.examples[i] for i in order],
                      data_collator=collator, callbacks=[Interleave()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training line would land in the --json output
    return trainer


def run(mode: str, device: torch.device) -> dict:
    s = shapes_for(mode, device)
    with tempfile.TemporaryDirectory(prefix="asft-bench-trainer-") as tmp:
        root = Path(tmp)
        fields = build(root, s, device)
        sft, sft_step = recipe_stepper(fields, "sft", root)
        _, asft_step = recipe_stepper(fields, "asft", root)
        seconds: dict[str, list[float]] = {"trainer": [], "sft": [], "asft": []}
        clock = {"trainer_from": None}

        def between_steps(step: int) -> None:  # called at the end of the Trainer's step ``step``
            synchronize(device)
            now = time.perf_counter()
            if clock["trainer_from"] is not None:
                seconds["trainer"].append(now - clock["trainer_from"])
            for name, fn in (("sft", sft_step), ("asft", asft_step)):
                start = time.perf_counter()
                fn(step)
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
            clock["trainer_from"] = time.perf_counter()

        _trainer(fields, sft, root, device, between_steps).train()
    warmup = max(1, s["steps"] // 8)
    seconds["sft"], seconds["asft"] = seconds["sft"][warmup + 1:], seconds["asft"][warmup + 1:]
    seconds["trainer"] = seconds["trainer"][warmup:]  # its first entry is step 1: ours[k] pairs with it[k - 1]
    ratio = paired_ratio(seconds["sft"], seconds["trainer"])
    asft_ratio = paired_ratio(seconds["asft"], seconds["trainer"])
    return result(
        "sft_step_over_trainer_step", ratio, "<= 1.0", ratio <= 1.0,
        asft_step_over_trainer_step=round(asft_ratio, 4), asft_target="<= 1.03", asft_met=asft_ratio <= 1.03,
        asft_step_over_sft_step=round(paired_ratio(seconds["asft"], seconds["sft"]), 4),
        ratio_method="median over steps of ours / the Trainer's next step (steps interleaved)",
        median_s={k: round(median(v), 5) for k, v in seconds.items()},
        shapes={k: s[k] for k in ("hidden", "intermediate", "layers", "heads", "batch", "words")},
        steps_timed=len(seconds["trainer"]), warmup_steps=warmup, precision=sft.precision, device=str(device),
        trainer="transformers Trainer + peft LoRA (same LoraConfig), adamw_torch, no clipping, constant lr")


main = main_for(run, "python -m benchmarks.trainer_compare")

if __name__ == "__main__":
    raise SystemExit(main())
