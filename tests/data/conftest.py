"""Fixtures for the ingestion and screening tests: the bundled encoder (loaded once) and a
small local tokenizer."""

from __future__ import annotations

import json

import pytest

from data_helpers import BENIGN, HARMFUL


@pytest.fixture(scope="session")
def embedder():
    from asft.data.screening.encoder import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from asft.sandbox.tokenizer import train_tokenizer

    texts = [json.dumps(r) for r in BENIGN + HARMFUL] * 4 + ["safe unsafe Verdict User Agent positive negative"]
    return train_tokenizer(texts, vocab_size=400, max_length=512)
