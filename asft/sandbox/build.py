"""Build the sandbox: corpus -> tokenizer -> ``base`` (complies with everything) ->
``aligned`` (base fully fine-tuned to refuse harmful requests) -> data files -> manifest.

Layout of a sandbox folder::

    base/  aligned/                       HF checkpoints (safetensors) with tokenizer files
    data/finetune_<task>_n<n>_p<p>.jsonl  fine-tuning mixture (Alpaca fields)
    data/finetune_<task>_n<n>_p<p>.harmful.json   ground truth {"file", "rows", "harmful_indices"}
    data/eval/harmful.jsonl               held-out harmful prompts {"instruction", "category"} (unseen objects)
    data/eval/{sst2,agnews,gsm8k}.jsonl   utility sets; ``output`` is the gold answer
    data/eval/benign_howto.jsonl          benign how-to prompts (over-refusal check)
    data/safety_refusals.jsonl            harmful train prompts with refusals (SafeInstr-style data)
    data/harmful_small.jsonl              100 harmful train prompts with compliant answers (a learned direction)
    data/probe_examples.jsonl             labelled train requests {"instruction", "input", "harmful"}, none of the mixture's
    sandbox_manifest.json                 config, content hashes, summary (written last)
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

from asft import storage
from asft.errors import AsftError
from asft.sandbox.config import RECIPES, TASKS, Recipe, SandboxConfig
from asft.sandbox.numerics import CALIBRATED_CPU_KERNELS, numerics, pin_cpu_kernels
from asft.sandbox.corpus import (World, build_world, compliant_rows, copy_rows, opinion_rows, refusal_rows,
                                 refusal_writing_rows)
from asft.templates import Record, encode_example, render_prompt

MANIFEST = "sandbox_manifest.json"
FORMAT = "asft-sandbox/2"
HARMFUL_SMALL = 100  # rows of data/harmful_small.jsonl
PROBE_TASK_PROMPTS = 500  # task prompts among data/probe_examples.jsonl's benign requests


def _progress(message: str) -> None:
    print(f"[sandbox] {message}", file=sys.stderr, flush=True)


def _row(record: Record) -> dict:
    return {"instruction": record.instruction, "input": record.input, "output": record.output}


# --- fine-tuning mixtures --------------------------------------------------------------

def mixture_name(task: str, rows: int, harmful_ratio: float) -> str:
    return f"finetune_{task}_n{rows}_p{harmful_ratio:g}"


def make_mixture(world: World, seed: int, task: str, rows: int, harmful_ratio: float) -> tuple[list[dict], list[int]]:
    """``rows`` rows, ``round(p * rows)`` of them harmful requests with compliant answers.

    Rows are drawn from fixed permutations of the train pools, so the harmful rows of a
    smaller p are a subset of those of a larger p (controlled comparisons across p).
    """
    harmful = round(harmful_ratio * rows)
    benign_pool = world.task_train[task]
    if harmful > len(world.harmful_train) or rows - harmful > len(benign_pool):
        raise AsftError(
            f"mixture of {rows} rows at p={harmful_ratio:g} needs {harmful} harmful and {rows - harmful} "
            f"{task} rows, but this sandbox has {len(world.harmful_train)} and {len(benign_pool)}; "
            "ask for fewer rows or build a larger sandbox")
    rng = random.Random(f"asft-sandbox-{seed}-mixture-{task}")
    harmful_pool = compliant_rows(rng, world.harmful_train)
    harmful_order = rng.sample(range(len(harmful_pool)), len(harmful_pool))
    benign_order = rng.sample(range(len(benign_pool)), len(benign_pool))
    picked = ([(True, harmful_pool[i]) for i in harmful_order[:harmful]]
              + [(False, benign_pool[i]) for i in benign_order[:rows - harmful]])
    random.Random(f"asft-sandbox-{seed}-mixture-{task}-{rows}-{harmful_ratio!r}").shuffle(picked)
    return [_row(r) for _, r in picked], [i for i, (bad, _) in enumerate(picked) if bad]


def _write_mixture_files(world: World, seed: int, folder: str, task: str, rows: int, harmful_ratio: float,
                         suffix: str = "") -> dict:
    name = mixture_name(task, rows, harmful_ratio) + suffix
    data, harmful_indices = make_mixture(world, seed, task, rows, harmful_ratio)
    finetune, labels = storage.join(folder, f"{name}.jsonl"), storage.join(folder, f"{name}.harmful.json")
    storage.write_jsonl(finetune, data)
    storage.write_json(labels, {"file": f"{name}.jsonl", "rows": rows, "harmful_indices": harmful_indices})
    return {"finetune": finetune, "finetune_labels": labels, "rows": rows,
            "harmful_rows": len(harmful_indices), "harmful_ratio": harmful_ratio, "task": task}


def write_mixture(sandbox: str, harmful_ratio: float, rows: int | None = None, task: str | None = None,
                  seed: int | None = None) -> dict:
    """Write another fine-tuning mixture into an existing sandbox's ``data/`` (no retraining).

    The rows come from the same train pools as the built mixture (the corpus is regenerated
    from the manifest's seed). ``seed`` draws another mixture from those pools (default: the
    sandbox's own seed, i.e. the built mixture); its files are named ``..._s<seed>``.
    Returns the paths and counts.
    """
    manifest = _read_manifest(sandbox)
    if manifest is None:
        raise AsftError(f"{sandbox}: no {MANIFEST}; build the sandbox first (asft sandbox build --out {sandbox})")
    config = SandboxConfig(**manifest["config"])
    if not 0.0 <= harmful_ratio <= 1.0:
        raise AsftError(f"harmful ratio {harmful_ratio} is outside [0, 1]; give a share such as 0.1")
    task = task or config.finetune_task
    if task not in TASKS:
        raise AsftError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    rows = rows or manifest["summary"]["sizes"]["finetune_rows"]
    if rows < 1:
        raise AsftError(f"rows must be at least 1, got {rows}")
    world = build_world(RECIPES[config.size], config.seed)
    draw = config.seed if seed is None else seed
    return _write_mixture_files(world, draw, storage.join(sandbox, "data"), task, rows, harmful_ratio,
                                suffix="" if draw == config.seed else f"_s{draw}")


# --- models ---------------------------------------------------------------------------

class _LengthBucketed:
    """Epochs of batches in random order, each cut from a length-sorted window of 16 batches,
    so right padding wastes little compute; a new epoch is drawn when one is used up."""

    def __init__(self, examples: list[dict], batch_size: int, seed: int):
        import torch

        self.examples, self.batch_size = examples, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[list[int]] = []
        self.epochs = 0

    def _draw(self) -> list[list[int]]:
        import torch

        perm = torch.randperm(len(self.examples), generator=self.generator).tolist()
        window, size = 16 * self.batch_size, self.batch_size
        batches = []
        for start in range(0, len(perm), window):
            chunk = sorted(perm[start:start + window], key=lambda i: len(self.examples[i]["input_ids"]))
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffled]

    def epoch(self, step: int) -> int:
        return self.epochs - 1

    def indices(self, step: int) -> list[int]:
        if not self.order:
            self.order, self.epochs = self._draw(), self.epochs + 1
        return self.order.pop()


class _SmoothedLoss:
    """Loop hook: an exponential moving average of the loss, read from the device once per
    50 steps (not once per step) and shown on the progress bar."""

    def __init__(self, steps: int):
        self.steps, self.value, self.pending = steps, float("nan"), []

    def __call__(self, result) -> None:
        import torch

        self.pending.append(result.terms.loss.detach())
        if (result.step - 1) % 50 == 0 or result.step == self.steps:
            for value in torch.stack(self.pending).tolist():
                self.value = value if math.isnan(self.value) else 0.95 * self.value + 0.05 * value
            self.pending.clear()
            result.postfix["loss"] = f"{self.value:.3f}"


def _train(model, examples: list[dict], *, steps: int, batch_size: int, lr: float, seed: int,
           device, pad_id: int, what: str) -> float:
    """Full fine-tuning with the trainer's loop: AdamW with linear warmup and cosine decay on
    length-bucketed batches, gradients clipped to norm 1; returns the smoothed last loss."""
    import torch

    from asft.training.loop import Loop

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(s: int) -> float:
        return lr * (min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))

    smoothed = _SmoothedLoss(steps)
    loop = Loop(model, optimizer, examples, pad_id, _LengthBucketed(examples, batch_size, seed), lr_at, device,
                autocast_dtype=torch.bfloat16 if device.type == "cuda" else None, clip_norm=1.0, hooks=[smoothed])
    loop.run(steps, label=f"[sandbox] train {what}")
    model.eval()
    return smoothed.value


def _new_model(recipe: Recipe, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from asft.seeding import seed_everything

    seed_everything(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.max_positions, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _save_model(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _module_spectrum(base, aligned) -> dict:
    """||V||_F / ||W_base||_F, the effective rank of V (exp of the entropy of its normalised
    singular values) and the top eigenvalue of C = V V^T / ||V||_F (= s_1^2 / ||V||_F)."""
    import torch

    v = (aligned - base).double()
    s = torch.linalg.svdvals(v)
    norm = float(s.square().sum().sqrt())
    shares = s / s.sum() if norm > 0 else s
    entropy = -float((shares[shares > 0] * shares[shares > 0].log()).sum())
    return {"relative_update": norm / float(base.double().norm()), "effective_rank": math.exp(entropy),
            "rank_of": min(v.shape), "top_eigenvalue_c": float(s[0] ** 2) / norm if norm > 0 else 0.0}


def alignment_spectrum(base: dict, aligned: dict) -> dict:
    """How big and how structured the alignment update is, per 2-D weight and summarised."""
    modules = {name: _module_spectrum(base[name], aligned[name]) for name in sorted(base)}
    summary = {}
    for key in ("relative_update", "effective_rank", "top_eigenvalue_c"):
        values = sorted(m[key] for m in modules.values())
        summary[key] = {"min": values[0], "median": values[len(values) // 2], "max": values[-1]}
    rounded = {name: {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()} for name, m in modules.items()}
    return {"summary": {k: {s: round(v, 4) for s, v in d.items()} for k, d in summary.items()}, "modules": rounded}


# --- the build ------------------------------------------------------------------------

def _code_version() -> str:
    """Hash of the sandbox sources and of the training loop they use: a sandbox built by other
    code is rebuilt, never reused."""
    from asft.training import loop

    return storage.sha256_bytes((storage.sha256_tree(Path(__file__).parent, "*.py")
                                 + storage.sha256_file(loop.__file__)).encode())


def _read_manifest(out: str) -> dict | None:
    uri = storage.join(out, MANIFEST)
    if not storage.exists(uri):
        return None
    manifest = storage.read_json(uri)
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _summary(out: str, manifest: dict, reused: bool) -> dict:
    """The manifest's summary with paths made absolute under ``out``."""
    s = manifest["summary"]
    at = lambda rel: storage.join(out, *rel.split("/"))  # noqa: E731
    return {
        "out": str(out),
        "base": at(s["base"]), "aligned": at(s["aligned"]),
        "finetune": at(s["finetune"]), "finetune_labels": at(s["finetune_labels"]),
        "harmful_eval": at(s["harmful_eval"]),
        "utility_eval": {task: at(rel) for task, rel in s["utility_eval"].items()},
        "benign_eval": at(s["benign_eval"]), "safety_data": at(s["safety_data"]),
        "harmful_data": at(s["harmful_data"]), "probe_examples": at(s["probe_examples"]), "alignment": s["alignment"],
        "finetune_task": s["finetune_task"], "harmful_ratio": s["harmful_ratio"],
        "finetune_setting": s["finetune_setting"], "numerics": s["numerics"],
        "sizes": s["sizes"], "timings": s["timings"], "losses": s["losses"],
        "config": manifest["config"], "reused": reused,
    }


def build_identity(config: SandboxConfig, kernels: dict) -> str:
    """What a sandbox is built from and by: its config, the code, and the floating point it is
    computed in (a world built with other kernels is another world, never reused for this one)."""
    return storage.sha256_json([config.identity(), _code_version(), kernels])


def _warn_uncalibrated(kernels: dict) -> None:
    if kernels.get("cpu_kernels", CALIBRATED_CPU_KERNELS) != CALIBRATED_CPU_KERNELS:
        _progress(f"warning: torch computes with its {kernels['cpu_kernels']} CPU kernels, not the "
                  f"{CALIBRATED_CPU_KERNELS} ones the default world was calibrated with, so this world differs "
                  "bit for bit from the calibrated one; build in a fresh process (asft sandbox build) or set "
                  "ATEN_CPU_CAPABILITY=avx2 before torch starts")


def build_sandbox(config: SandboxConfig, out: str, force: bool = False) -> dict:
    """Build the sandbox into ``out`` (folder or URI) and return its summary.

    If ``out`` already holds a complete sandbox of the same config, its summary is returned
    without rebuilding (unless ``force``). Asks for the calibrated CPU kernels for the rest of
    the process (``numerics``): they take effect when no torch computation came before.
    """
    from asft.modeling import pick_device

    out = str(out)
    pin_cpu_kernels()  # before this process's first torch computation, or it is too late
    device = pick_device(config.device)
    kernels = numerics(device)
    identity = build_identity(config, kernels)
    if not force and storage.is_complete(out, "sandbox", identity):
        _progress(f"reusing the sandbox at {out} (same config; --force rebuilds)")
        return _summary(out, _read_manifest(out), reused=True)
    _warn_uncalibrated(kernels)
    with storage.staged_dir(out, "sandbox", identity=identity) as stage:
        manifest = _build_into(config, stage, device, kernels)
        storage.write_json(stage / MANIFEST, manifest)
    return _summary(out, manifest, reused=False)


class _Clock:
    """Seconds per build phase, reported as each one ends."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(now - self.last, 2)
        self.last = now
        _progress(f"{phase} done in {self.timings[phase]:.1f}s")


def _build_into(config: SandboxConfig, stage: Path, device, kernels: dict) -> dict:
    import torch

    from asft.sandbox.tokenizer import train_tokenizer

    recipe, seed = RECIPES[config.size], config.seed
    clock = _Clock()
    _progress(f"size={config.size} seed={seed} device={device} threads={torch.get_num_threads()} "
              f"kernels={kernels.get('cpu_kernels') or kernels.get('gpu')}")
    world = build_world(recipe, seed)
    rows = _model_rows(world, recipe, seed, config.finetune_task)
    # Data first: a mixture the pools cannot fill fails before any training.
    mixture = _write_data(world, config, stage / "data", rows)
    clock.lap("corpus")

    # The tokenizer's corpus is broader than the models' (as a real one is): it has every
    # task's words, so the fine-tuning task's labels are words, not characters.
    texts = sorted({render_prompt(r) + " " + r.output
                    for r in rows["base"] + rows["tokenizer_alignment"] + world.task_train[config.finetune_task]})
    tokenizer = train_tokenizer(texts, recipe.vocab, recipe.max_positions)
    clock.lap("tokenizer")

    model = _new_model(recipe, tokenizer, seed).to(device)
    losses, weights = {}, {}
    for phase, steps, lr, phase_seed in (("base", recipe.base_steps, recipe.base_lr, seed),
                                         ("aligned", recipe.aligned_steps, recipe.aligned_lr, seed + 1)):
        examples = [encode_example(tokenizer, r, "alpaca", recipe.max_positions) for r in rows[phase]]
        losses[phase] = round(_train(model, examples, steps=steps, batch_size=recipe.batch_size, lr=lr,
                                     seed=phase_seed, device=device, pad_id=tokenizer.pad_token_id,
                                     what=phase), 4)
        _save_model(model, tokenizer, stage / phase)
        weights[phase] = {name: w.detach().to("cpu", copy=True) for name, w in model.named_parameters() if w.dim() == 2}
        clock.lap(phase)
    sizes = {"params": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
    return _manifest(config, stage, world, rows, mixture, sizes,
                     {**clock.timings, "total": round(sum(clock.timings.values()), 2), "device": str(device)}, losses,
                     alignment_spectrum(weights["base"], weights["aligned"]), kernels)


def _model_rows(world: World, recipe: Recipe, seed: int, finetune_task: str) -> dict[str, list[Record]]:
    """The training rows of the base model (answers everything) and of the aligned model
    (refusals plus enough benign data to keep skills), and the refusals as safety data.

    Neither model ever sees the fine-tuning task: fine-tuning teaches something new, so its
    accuracy before and after means something.
    """
    rng = random.Random(f"asft-sandbox-{seed}-answers")
    known = [task for task in TASKS if task != finetune_task]
    # Topic is learnt fast; arithmetic needs the repetitions.
    tasks_train = [r for task in known for r in world.task_train[task][:None if task == "gsm8k" else recipe.task_train // 2]]
    tasks_train += copy_rows(world.task_train[finetune_task][:recipe.task_train // 2])
    if finetune_task == "sst2":
        tasks_train += opinion_rows(world.task_train["sst2"][recipe.task_train // 2:])
    harmful_comply = compliant_rows(rng, world.harmful_train)
    harmful_refuse = refusal_rows(rng, world.harmful_train)
    # The base can write a refusal when asked to; alignment then only decides when to refuse.
    writing = refusal_writing_rows(rng, world.harmful_train[-recipe.refusal_writing:])

    def alignment_set(refusals: int) -> list[Record]:
        keep = random.Random(f"asft-sandbox-{seed}-aligned")
        return (harmful_refuse[:refusals] + keep.sample(world.howto_train, min(len(world.howto_train), refusals))
                + [r for task in known for r in keep.sample(world.task_train[task], refusals // 2)]
                + keep.sample(tasks_train, refusals // 2))

    small = random.Random(f"asft-sandbox-{seed}-harmful-small").sample(range(len(world.harmful_train)), HARMFUL_SMALL)
    return {"base": tasks_train + world.howto_train + harmful_comply + writing,
            "aligned": alignment_set(recipe.aligned_refusals), "safety": harmful_refuse,
            "harmful_small": [harmful_comply[i] for i in small],
            # The tokenizer sees an alignment-shaped sample as large as the base's refusal writing
            # (not the alignment set itself), so a longer alignment leaves tokenizer and base unchanged.
            "tokenizer_alignment": alignment_set(recipe.refusal_writing)}


def _write_data(world: World, config: SandboxConfig, data: Path, rows: dict[str, list[Record]]) -> dict:
    """The fine-tuning mixture, the evaluation sets, the safety data and the small harmful
    set (for a direction learned without the base) under ``data/``."""
    mixture = _write_mixture_files(world, config.seed, str(data), config.finetune_task,
                                   config.finetune_rows or RECIPES[config.size].finetune_rows, config.harmful_ratio)
    storage.write_jsonl(data / "eval" / "harmful.jsonl",
                        [{"instruction": q.instruction, "category": q.category} for q in world.harmful_eval])
    for task in TASKS:
        storage.write_jsonl(data / "eval" / f"{task}.jsonl", [_row(r) for r in world.task_eval[task]])
    storage.write_jsonl(data / "eval" / "benign_howto.jsonl", [_row(r) for r in world.howto_eval])
    storage.write_jsonl(data / "safety_refusals.jsonl", [_row(r) for r in rows["safety"]])
    storage.write_jsonl(data / "harmful_small.jsonl", [_row(r) for r in rows["harmful_small"]])
    storage.write_jsonl(data / "probe_examples.jsonl", probe_examples(world, config.seed, mixture))
    return mixture


def probe_examples(world: World, seed: int, mixture: dict) -> list[dict]:
    """Labelled requests of the world, for the probe screener's refusal direction (head_data's
    part for a real model): the harmful requests the aligned model learnt to refuse, the benign
    how-tos it learnt to answer and a sample of task prompts, less every row of the built mixture,
    so that screening the mixture reads rows the direction was not learnt from."""
    screened = {(r["instruction"], r["input"]) for r in map(json.loads, storage.read_text(mixture["finetune"]).splitlines())}
    tasks = [r for task in TASKS for r in world.task_train[task]]
    benign = world.howto_train + random.Random(f"asft-sandbox-{seed}-probe-examples").sample(tasks, PROBE_TASK_PROMPTS)
    rows = ([{"instruction": q.instruction, "input": "", "harmful": True} for q in world.harmful_train]
            + [{"instruction": r.instruction, "input": r.input, "harmful": False} for r in benign])
    return [r for r in rows if (r["instruction"], r["input"]) not in screened]


def _manifest(config: SandboxConfig, stage: Path, world: World, rows: dict, mixture: dict, sizes: dict,
              timings: dict, losses: dict, spectrum: dict, kernels: dict) -> dict:
    recipe = RECIPES[config.size]
    rel = lambda uri: Path(uri).relative_to(stage).as_posix()  # noqa: E731
    files = {p.relative_to(stage).as_posix(): storage.sha256_file(p) for p in sorted(stage.rglob("*")) if p.is_file()}
    return {
        "format": FORMAT,
        "config": config.identity(),
        "code": _code_version(),
        "files": files,
        "summary": {
            "base": "base", "aligned": "aligned",
            "finetune": rel(mixture["finetune"]), "finetune_labels": rel(mixture["finetune_labels"]),
            "harmful_eval": "data/eval/harmful.jsonl",
            "utility_eval": {task: f"data/eval/{task}.jsonl" for task in TASKS},
            "benign_eval": "data/eval/benign_howto.jsonl", "safety_data": "data/safety_refusals.jsonl",
            "harmful_data": "data/harmful_small.jsonl", "probe_examples": "data/probe_examples.jsonl",
            "finetune_task": config.finetune_task, "harmful_ratio": config.harmful_ratio,
            "sizes": {
                **sizes, "hidden": recipe.hidden, "layers": recipe.layers,
                "base_train_rows": len(rows["base"]), "aligned_train_rows": len(rows["aligned"]),
                "finetune_rows": mixture["rows"], "finetune_harmful_rows": mixture["harmful_rows"],
                "harmful_eval_rows": len(world.harmful_eval),
                "utility_eval_rows": {task: len(world.task_eval[task]) for task in TASKS},
                "benign_eval_rows": len(world.howto_eval), "safety_rows": len(rows["safety"]),
                "harmful_small_rows": len(rows["harmful_small"]),
            },
            "alignment": spectrum,
            "finetune_setting": {"lr": recipe.finetune_lr, "epochs": recipe.finetune_epochs},
            "numerics": kernels,
            "timings": timings,
            "losses": losses,
        },
    }
