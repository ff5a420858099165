"""Test environment: offline, no telemetry, a private Prefect home, small thread pools.

Set before any test module imports mlflow, prefect or transformers. Then the shared fixtures:
the tiny sandbox, tiny real checkpoints (a random Llama base and an "aligned" copy with
perturbed weights, sharded; a Qwen2 pair with q/k/v biases; a word-level tokenizer saved next
to the weights), the sandbox with a direction and two updates for the landscape and inspection
tests, and an S3 endpoint.
"""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="asft-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("ASFT_CACHE_DIR", tempfile.mkdtemp(prefix="asft-cache-"))
# the default screener is tuned once per machine (about 20 min), shared by every test worker
os.environ.setdefault("ASFT_SCREENER_CACHE", os.path.join(tempfile.gettempdir(), "asft-tuned-screener"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The sandbox's calibrated CPU kernels for the whole session, before torch starts: the tiny
# world is then the same on every machine, and subprocesses compute as this process does.
from asft.sandbox.numerics import pin_cpu_kernels  # noqa: E402

pin_cpu_kernels()

import pytest  # noqa: E402
import torch  # noqa: E402

# xdist runs one worker per core: one thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_configure(config):
    """Tune the default screener, if this machine has not yet, before xdist starts its workers:
    here it gets every core, in a worker one thread while the other worker waits for it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from asft.data.screening.tuned import default_folder

    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():  # its progress is shown
        default_folder()


@pytest.fixture(scope="session")
def bench_data():
    """The paper's asft-bench folder (ASFT_BENCH_DATA); tests using it skip when unset."""
    from pathlib import Path

    folder = os.environ.get("ASFT_BENCH_DATA")
    if not folder or not Path(folder).is_dir():
        pytest.skip("ASFT_BENCH_DATA is not set to the asft-bench folder")
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_sandbox(tmp_path_factory):
    """The tiny sandbox (real base/aligned Llama models + data), built once per test session,
    shared by all xdist workers through a file lock. Returns ``build_sandbox``'s summary."""
    from filelock import FileLock

    from asft.sandbox import SandboxConfig, build_sandbox

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(root / "tiny-sandbox.lock")):
        return build_sandbox(SandboxConfig(size="tiny"), str(root / "tiny-sandbox"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback with the bucket ``asft``; AWS_* variables point at it."""
    from moto_server import moto_endpoint

    with moto_endpoint() as endpoint:
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        from asft import storage

        fs, _ = storage.filesystem("s3://asft")
        fs.mkdir("asft")
        yield endpoint
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


from tiny_models import llama_config, make_tokenizer, save_pair  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory, tokenizer):
    """(aligned, base) tiny Llama folders, the base one in several shards with an index."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    aligned, base = save_pair(tmp_path_factory.mktemp("llama"), LlamaForCausalLM(llama_config()), seed=1,
                              shard="20KB", tokenizer=tokenizer)
    assert (base / "model.safetensors.index.json").exists() and (aligned / "model.safetensors").exists()
    return aligned, base


@pytest.fixture(scope="session")
def qwen_pair(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)
    return save_pair(tmp_path_factory.mktemp("qwen"), Qwen2ForCausalLM(config), seed=2)


@pytest.fixture(scope="session")
def train_rows(tmp_path_factory):
    """A small Alpaca-style JSONL training file."""
    rows = []
    for i in range(24):
        good = i % 2 == 0
        rows.append({"instruction": "what is the sentiment of the review ?",
                     "input": f"the {'movie' if i % 3 else 'film'} was {'great' if good else 'awful'}",
                     "output": "positive" if good else "negative"})
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def updated_sandbox(tiny_sandbox, tmp_path_factory):
    """For the landscape and inspection tests: the sandbox, its q/v direction, a full checkpoint at W_a + 0.3 V + 0.2 d_perp (seed 0)
    and a LoRA adapter (r 4, alpha 8, random B) saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model

    from asft.direction import DirectionConfig, extract_direction, load_direction
    from asft.evaluation.generation import load_model
    from asft.landscape import WeightShift, perpendicular_direction

    folder = tmp_path_factory.mktemp("landscape")
    direction = str(folder / "direction")
    extract_direction(DirectionConfig(aligned=tiny_sandbox["aligned"], base=tiny_sandbox["base"], out=direction))
    V = load_direction(direction).vectors
    model, tokenizer = load_model(tiny_sandbox["aligned"], device="cpu")
    with WeightShift(model, [V, perpendicular_direction(V, seed=0)]) as shift:
        shift.move(0.3, 0.2)
        model.save_pretrained(folder / "moved")
        tokenizer.save_pretrained(folder / "moved")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    peft_model.save_pretrained(folder / "adapter")
    return {**tiny_sandbox, "direction": direction, "moved": str(folder / "moved"), "adapter": str(folder / "adapter"),
            "peft_model": peft_model}
