"""Every common architecture, end to end on tiny random models: direction (the model type's
preset) -> AsFT train -> eval -> Safe LoRA -> inspect, with the penalty checked against the
naive dense formula in the model's true (out, in) orientation; Conv1D (GPT-2) orientation;
fused q/k/v row layouts against the models' own split code; the errors that name the model's
own modules; --target-regex on train."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from asft.architectures import QkvLayout, checkpoint_layout
from asft.direction import DirectionConfig, extract_direction, load_direction
from asft.errors import AsftError
from asft.training import TrainConfig, train
from tiny_models import save_pair

pytestmark = pytest.mark.slow

SMALL = dict(num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
GQA = dict(SMALL, hidden_size=32, intermediate_size=64, num_key_value_heads=2)


def _config(model_type: str):
    import transformers as t

    return {
        "llama": lambda: t.LlamaConfig(**GQA),
        "qwen2": lambda: t.Qwen2Config(**GQA),
        "mistral": lambda: t.MistralConfig(**GQA),
        "gemma2": lambda: t.Gemma2Config(**GQA, head_dim=8),
        "opt": lambda: t.OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=128,
                                   **SMALL),
        "phi3": lambda: t.Phi3Config(**GQA, pad_token_id=0),
        "gpt_neox": lambda: t.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **SMALL),
        "falcon": lambda: t.FalconConfig(hidden_size=32, new_decoder_architecture=True, num_kv_heads=2, **SMALL),
        "gpt2": lambda: t.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=128),
    }[model_type]()


# what the preset must pick, and whether the checkpoint stores it as (in, out)
EXPECTED = {"llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"),
            "gemma2": ("q_proj", "v_proj"), "opt": ("q_proj", "v_proj"), "phi3": ("qkv_proj",),
            "gpt_neox": ("query_key_value",), "falcon": ("query_key_value",), "gpt2": ("c_attn",)}


def _pair(root, model_type: str, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _config(model_type)
    config.update(dict(bos_token_id=1, eos_token_id=2, pad_token_id=0))
    return save_pair(root, AutoModelForCausalLM.from_config(config), seed=3, tokenizer=tokenizer)


def _true_directions(aligned, base, modules: list[str]) -> dict[str, torch.Tensor]:
    """V in nn.Linear's (out, in) orientation, from the loaded models' own weights: a Conv1D's
    weight W (in, out) computes x W, i.e. the linear map W^T."""
    from transformers import AutoModelForCausalLM

    from asft.architectures import is_transposed

    a, b = AutoModelForCausalLM.from_pretrained(aligned), AutoModelForCausalLM.from_pretrained(base)
    out = {}
    for name in modules:
        module = a.get_submodule(name)
        V = module.weight.detach() - b.get_submodule(name).weight.detach()
        out[name] = V.T if is_transposed(module) else V
    return out


def _naive_penalty(adapter, V: dict[str, torch.Tensor], rows: dict[str, list[torch.Tensor]] | None = None) -> float:
    """sum ||(I - C) B A||_F^2, C = V V^T / ||V||_F formed densely (per row block when given)."""
    weights = load_file(adapter / "adapter_model.safetensors")
    total = 0.0
    for key, A in weights.items():
        if "lora_A" not in key:
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        update = (weights[key.replace("lora_A", "lora_B")] @ A).double()
        for block in (rows or {}).get(name, [torch.arange(update.shape[0])]):
            Vb = V[name][block].double()
            C = Vb @ Vb.T / torch.linalg.matrix_norm(Vb)
            total += float((update[block] - C @ update[block]).square().sum())
    return total


@pytest.mark.parametrize("model_type", list(EXPECTED))
def test_pipeline_on_every_common_architecture(model_type, tmp_path, tokenizer, train_rows):
    from asft.evaluation.config import EvalConfig
    from asft.evaluation.evaluate import evaluate
    from asft.update_inspection import inspect_update

    aligned, base = _pair(tmp_path, model_type, tokenizer)
    direction = tmp_path / "direction"
    manifest = extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(direction)))
    assert manifest["target_preset"] == model_type and tuple(manifest["target_modules"]) == EXPECTED[model_type]
    assert len(manifest["modules"]) == 2 * len(EXPECTED[model_type])
    assert manifest["transposed_modules"] == (manifest["modules"] if model_type == "gpt2" else [])
    V = _true_directions(aligned, base, manifest["modules"])
    stored = load_direction(str(direction)).vectors
    assert all(torch.equal(stored[name], V[name]) for name in V)  # (out, in), whatever the checkpoint's layout

    common = dict(model=str(aligned), data=str(train_rows), direction=str(direction), preset="sandbox", batch_size=8,
                  lr=5e-3, device="cpu", template="alpaca")
    train(TrainConfig(**common, out=str(tmp_path / "one"), method="asft", max_steps=1))
    steps = []
    summary = train(TrainConfig(**common, out=str(tmp_path / "asft"), method="asft", max_steps=2), on_step=steps.append)
    # B = 0 at step 1, so the penalty's gradient is zero there and both runs take the same first step:
    # the penalty logged at step 2 is the one-step adapter's
    naive = _naive_penalty(tmp_path / "one", V)
    assert naive > 0 and steps[1]["penalty"] == pytest.approx(naive, rel=1e-4)
    targets = json.loads((tmp_path / "asft" / "train_manifest.json").read_text())["targets"]
    assert targets["target_preset"] == model_type and targets["lora_modules"] == manifest["modules"]
    assert targets["transposed_modules"] == manifest["transposed_modules"]

    report = evaluate(EvalConfig(model=str(aligned), adapter=summary["adapter"], harmful=str(train_rows),
                                 out=str(tmp_path / "eval"), limit=2, max_new_tokens=3, device="cpu", progress=False,
                                 template="alpaca"))
    assert report["harmful_total"] == 2 and report["adapter"] == summary["adapter"]

    train(TrainConfig(model=str(aligned), out=str(tmp_path / "safe"), method="safelora", adapter=summary["adapter"],
                      direction=str(direction), safelora_mode="number", safelora_k=1))
    key, projected = safe_projected_b(tmp_path / "safe")
    name = key.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
    C = V[name].double() @ V[name].double().T / torch.linalg.matrix_norm(V[name].double())
    B = load_file(tmp_path / "asft" / "adapter_model.safetensors")[key]
    torch.testing.assert_close(projected.double(), C @ B.double(), rtol=1e-4, atol=1e-7)

    inspected = inspect_update(str(direction), adapter=summary["adapter"])
    assert inspected["modules"] == len(V)
    for row in inspected["rows"]:
        dW = _dense_update(tmp_path / "asft", row["module"])
        cos = float((dW * V[row["module"]]).sum() / (dW.norm() * V[row["module"]].norm()))
        assert row["cosine"] == pytest.approx(cos, rel=1e-4, abs=1e-7)


def _dense_update(adapter, name: str) -> torch.Tensor:
    weights = load_file(adapter / "adapter_model.safetensors")
    prefix = f"base_model.model.{name}"
    return weights[f"{prefix}.lora_B.weight"].double() @ weights[f"{prefix}.lora_A.weight"].double()


@pytest.fixture(scope="module")
def gpt2_world(tmp_path_factory, tokenizer):
    """A GPT-2 pair and its direction on the square attn.c_proj (where a transpose would go unnoticed)."""
    root = tmp_path_factory.mktemp("gpt2")
    aligned, base = _pair(root, "gpt2", tokenizer)
    direction = root / "direction"
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(direction),
                                      target_regex=r"transformer\.h\.\d+\.attn\.c_proj"))
    return aligned, base, direction


def test_gpt2_inspect_cosine_is_the_naive_cosine_in_the_true_orientation(gpt2_world, tmp_path):
    from transformers import AutoModelForCausalLM

    from asft.update_inspection import inspect_update

    aligned, base, direction = gpt2_world
    modules = load_direction(str(direction)).manifest["modules"]
    V = _true_directions(aligned, base, modules)
    # a full fine-tuned checkpoint: W_ft = W_a + Conv1D-stored (0.5 V + noise)^T
    tuned = AutoModelForCausalLM.from_pretrained(aligned)
    g = torch.Generator().manual_seed(0)
    updates = {}
    with torch.no_grad():
        for name in modules:
            dW = 0.5 * V[name] + 0.02 * torch.randn(V[name].shape, generator=g)
            tuned.get_submodule(name).weight.add_(dW.T)
            updates[name] = dW
    tuned.save_pretrained(tmp_path / "tuned")
    rows = {r["module"]: r for r in inspect_update(str(direction), checkpoint=str(tmp_path / "tuned"))["rows"]}
    for name, dW in updates.items():
        naive = float((dW * V[name]).sum() / (dW.norm() * V[name].norm()))
        assert rows[name]["cosine"] == pytest.approx(naive, rel=1e-4)
        wrong = float((dW.T * V[name]).sum() / (dW.norm() * V[name].norm()))
        assert abs(naive - wrong) > 1e-3  # the fixture tells the orientations apart
    # a direction written before asft recorded the layout cannot be trusted on Conv1D weights
    old = tmp_path / "old"
    shutil.copytree(direction, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("weight_layout", "transposed_modules"):
        del manifest[key]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AsftError, match="predates asft's .out, in. layout; re-run `asft direction`"):
        inspect_update(str(old), checkpoint=str(tmp_path / "tuned"))


def test_gpt2_landscape_moves_the_conv1d_weights_along_the_true_direction(gpt2_world):
    from transformers import AutoModelForCausalLM

    from asft.landscape import WeightShift, base_difference, perpendicular_direction

    aligned, base, direction = gpt2_world
    V = load_direction(str(direction)).vectors
    model, base_model = AutoModelForCausalLM.from_pretrained(aligned), AutoModelForCausalLM.from_pretrained(base)
    with WeightShift(model, [V, perpendicular_direction(V, 0)]) as shift:
        shift.move(-1.0, 0.0)  # a = -1 is the base model on the target modules
        for name in V:
            torch.testing.assert_close(model.get_submodule(name).weight, base_model.get_submodule(name).weight)
    every = base_difference(model, str(base))  # modules "all": every 2-D weight, also in (out, in) layout
    name = "transformer.h.0.attn.c_attn.weight"
    assert tuple(every[name].shape) == (96, 32)
    with WeightShift(model, [every, perpendicular_direction(every, 0)]) as shift:
        shift.move(-1.0, 0.0)
        for key, param in model.named_parameters():
            if key in every:
                torch.testing.assert_close(param, base_model.get_parameter(key))


def test_train_takes_the_regex_the_direction_was_built_with(gpt2_world, tmp_path, train_rows):
    aligned, _, direction = gpt2_world
    summary = train(TrainConfig(model=str(aligned), data=str(train_rows), out=str(tmp_path / "a"), method="asft",
                                direction=str(direction), target_regex=r"transformer\.h\.\d+\.attn\.c_proj",
                                preset="sandbox", max_steps=2, device="cpu", template="alpaca"))
    manifest = json.loads((tmp_path / "a" / "train_manifest.json").read_text())
    assert manifest["targets"]["lora_modules"] == load_direction(str(direction)).manifest["modules"]
    assert manifest["targets"]["target_preset"] is None and summary["final_penalty"] > 0


def test_targets_that_match_nothing_list_the_models_own_modules(gpt2_world, tmp_path, train_rows):
    aligned, base, direction = gpt2_world
    with pytest.raises(AsftError, match="this gpt2 model's linear modules: c_attn, c_proj, c_fc; "
                                        "pass --target-modules c_attn"):
        extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(tmp_path / "d"),
                                          target_modules=["q_proj", "v_proj"]))
    with pytest.raises(AsftError, match="LoRA targets q_proj,v_proj match no weight .* c_attn, c_proj, c_fc"):
        train(TrainConfig(model=str(aligned), data=str(train_rows), out=str(tmp_path / "t"), method="sft",
                          target_modules=["q_proj", "v_proj"], device="cpu"))
    assert not (tmp_path / "d").exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize("model_type", ["phi3", "gpt_neox", "gpt2"])
def test_fused_qkv_anchored_on_q_and_v_rows_only(model_type, tmp_path, tokenizer, train_rows):
    aligned, base = _pair(tmp_path, model_type, tokenizer)
    direction = tmp_path / "direction"
    manifest = extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(direction)))
    layout = QkvLayout(**next(iter(manifest["fused_qkv"].values())))
    V = _true_directions(aligned, base, manifest["modules"])
    rows = {name: [layout.rows("q"), layout.rows("v")] for name in V}
    common = dict(model=str(aligned), data=str(train_rows), direction=str(direction), preset="sandbox", batch_size=8,
                  device="cpu", template="alpaca", fused_qkv_anchor="qv")
    train(TrainConfig(**common, out=str(tmp_path / "one"), method="asft", max_steps=1))
    steps = []
    train(TrainConfig(**common, out=str(tmp_path / "two"), method="asft", max_steps=2), on_step=steps.append)
    naive = _naive_penalty(tmp_path / "one", V, rows)
    assert naive > 0 and steps[1]["penalty"] == pytest.approx(naive, rel=1e-4)
    assert naive != pytest.approx(_naive_penalty(tmp_path / "one", V), rel=1e-3)  # not the whole-matrix penalty
    # Safe LoRA with the same anchor: C B on the q rows and on the v rows, the k rows as trained
    train(TrainConfig(model=str(aligned), out=str(tmp_path / "safe"), method="safelora", direction=str(direction),
                      adapter=str(tmp_path / "two"), fused_qkv_anchor="qv", safelora_mode="number", safelora_k=1))
    key, after = safe_projected_b(tmp_path / "safe")
    before = load_file(tmp_path / "two" / "adapter_model.safetensors")[key].double()
    name = key.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
    assert torch.equal(after[layout.rows("k")], before[layout.rows("k")].float())
    for block in rows[name]:
        Vb = V[name][block].double()
        torch.testing.assert_close(after[block].double(), Vb @ Vb.T @ before[block] / torch.linalg.matrix_norm(Vb),
                                   rtol=1e-4, atol=1e-7)


def test_qv_anchoring_needs_a_fused_module(tmp_path, tokenizer, train_rows):
    aligned, base = _pair(tmp_path, "llama", tokenizer)
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(tmp_path / "d")))
    with pytest.raises(AsftError, match="fused_qkv_anchor qv: none of the modules .* use fused_qkv_anchor whole"):
        train(TrainConfig(model=str(aligned), data=str(train_rows), out=str(tmp_path / "x"), method="asft",
                          direction=str(tmp_path / "d"), fused_qkv_anchor="qv", device="cpu", max_steps=1))
    assert not (tmp_path / "x").exists()


def safe_projected_b(folder):
    manifest = json.loads((folder / "train_manifest.json").read_text())
    (name,) = manifest["safelora"]["projected"]
    key = f"base_model.model.{name}.lora_B.weight"
    return key, load_file(folder / "adapter_model.safetensors")[key]


def _falcon_split(config):
    """The rows of query_key_value that Falcon's own code takes as q, k and v. transformers < 5.25
    splits in ``_split_heads``; 5.25 splits inline in ``forward`` and hands q, k and v to the
    attention interface, so there every output row is made to carry its index and an attention
    function registered for the test records what reaches it (ALiBi: no rotary on the way)."""
    from transformers.models.falcon.modeling_falcon import FalconAttention

    attention = FalconAttention(config, layer_idx=0)
    rows, width = attention.query_key_value.out_features, config.hidden_size
    if hasattr(attention, "_split_heads"):
        split = attention._split_heads(torch.arange(rows, dtype=torch.float64).view(1, 1, rows))
    else:
        from transformers import AttentionInterface

        seen = []
        AttentionInterface.register("record_qkv", lambda module, q, k, v, *args, **kwargs:
                                    (seen.extend((q, k, v)), (torch.zeros_like(q).transpose(1, 2), None))[1])
        config = type(config).from_dict({**config.to_dict(), "alibi": True})
        config._attn_implementation = "record_qkv"
        attention = FalconAttention(config, layer_idx=0).double()
        with torch.no_grad():
            attention.query_key_value.weight.copy_(torch.arange(rows, dtype=torch.float64)[:, None].expand(rows, width) / width)
            attention(torch.ones(1, 1, width, dtype=torch.float64), attention_mask=None)
        split = seen
    return [sorted(int(i) for i in t.flatten().unique()) for t in split]


@pytest.mark.parametrize("variant", [dict(new_decoder_architecture=True, num_kv_heads=2),
                                     dict(multi_query=True), dict(multi_query=False)])
def test_falcon_qkv_rows_are_the_models_own_split(variant, tmp_path):
    from transformers import FalconConfig, FalconForCausalLM

    config = FalconConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, vocab_size=16, **variant)
    FalconForCausalLM(config).save_pretrained(tmp_path)
    layout = checkpoint_layout(tmp_path, ["transformer.h.0.self_attention.query_key_value"]).qkv["query_key_value"]
    assert [sorted(layout.rows(block).tolist()) for block in "qkv"] == _falcon_split(config)


@pytest.mark.parametrize("model_type", ["phi3", "gpt_neox", "gpt2"])
def test_fused_qkv_rows_are_the_ones_the_model_reads_as_q_k_v(model_type):
    """The fused output is replaced by its row numbers; the attention function the model calls
    (one token at position 0: rotary is the identity) shows which rows became q, k and v."""
    from transformers import AttentionInterface, AutoModelForCausalLM

    from asft.architectures import PRESETS

    captured = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured.append((query, key, value))
        return torch.zeros_like(query).transpose(1, 2).contiguous(), None

    AttentionInterface.register("asft_capture_qkv", capture)
    config = _config(model_type)
    config._attn_implementation = "asft_capture_qkv"
    model = AutoModelForCausalLM.from_config(config)
    preset = PRESETS[model_type]
    layout = preset.qkv(config)
    fused = next(m for n, m in model.named_modules() if n.endswith(preset.targets[0]))
    fused.register_forward_hook(lambda module, args, out: torch.arange(layout.rows_total, dtype=out.dtype).expand_as(out))
    with torch.no_grad():
        model(torch.tensor([[3]]))
    read = [sorted(int(x) for x in t.flatten().unique()) for t in captured[0]]
    assert read == [sorted(layout.rows(block).tolist()) for block in "qkv"]


def test_a_model_type_without_preset_needs_targets_and_is_told_its_modules():
    from asft.architectures import resolve_targets

    weights = {"layers.0.attn.wq": 2, "layers.0.attn.wv": 2, "layers.0.norm": 1, "embed": 2}
    with pytest.raises(AsftError, match="no target preset for model type 'mystery'; this mystery model's linear "
                                        "modules: wq, wv; pass --target-modules"):
        resolve_targets("mystery", None, None, weights, "model m")
    assert resolve_targets("mystery", ["wv"], None, weights, "model m").record() == {
        "target_preset": None, "target_modules": ["wv"], "target_regex": None}
