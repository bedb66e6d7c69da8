"""Shared fixtures: a tiny tokenizer, a tiny StreamMind model, a small synthetic world and a
pretrained tiny tower (CPU, seconds). Helpers that are not fixtures live in tests/helpers.py.

Run: .venv/bin/python -m pytest tests -q
"""

from __future__ import annotations

import pytest

from tests.helpers import make_tiny


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from streammind.synthetic.world import build_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def tiny(tiny_tokenizer):
    return make_tiny(tiny_tokenizer)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A few videos of the synthetic world (seconds to generate)."""
    from streammind.synthetic.world import WorldConfig, build_tokenizer, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, WorldConfig(seed=1, num_train=6, num_val=1, num_test=3))
    build_tokenizer(out / "tokenizer")
    return out


@pytest.fixture(scope="session")
def small_tower(small_world, tmp_path_factory):
    """The tiny preset's tower after a few steps of pretraining on `small_world` (a CLIPVisionModel dir)."""
    from streammind.synthetic.tower_pretrain import pretrain_tower

    out = tmp_path_factory.mktemp("tower")
    pretrain_tower(small_world, out, steps=5, batch_size=16, progress=False)
    return out
