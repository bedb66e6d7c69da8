"""Save / load round trips (bit-exact) and building from CLIP + LLM directories.

Run: .venv/bin/python -m pytest tests/model/test_save_load.py -q
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

from streammind import StreamMindConfig, StreamMindForCausalLM, build_from_parts, load_model, save_model
from streammind.builder import CheckpointError
from tests.helpers import batch_of_two


def test_round_trip_is_bit_exact(tiny, tmp_path):
    model, processor = tiny
    save_model(model, processor, tmp_path)
    loaded, proc2 = load_model(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch, _ = batch_of_two(processor)
    with torch.no_grad():
        o1, o2 = model(**batch), loaded(**batch)
    assert torch.equal(o1.logits, o2.logits) and torch.equal(o1.gate_logits, o2.gate_logits)
    assert proc2.video_token_id == processor.video_token_id == loaded.config.video_token_id
    assert proc2.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    # Every setting survives; only load-time bookkeeping (path, dtype) may be added.
    assert _settings(loaded.config.to_dict()) == _settings(model.config.to_dict())


def _settings(d):
    if isinstance(d, dict):
        return {k: _settings(v) for k, v in d.items() if k not in ("_name_or_path", "dtype")}
    return d


def test_loading_does_not_depend_on_the_directory_name(tiny, tmp_path):
    model, processor = tiny
    odd = tmp_path / "not-a-streammind-name_mistral_clip"
    save_model(model, processor, odd)
    loaded, _ = load_model(odd)
    assert torch.equal(loaded.perception.block.mixer.A_log, model.perception.block.mixer.A_log)


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no StreamMind checkpoint"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)


def test_mismatched_tokenizer_is_rejected(tiny, tmp_path, tiny_tokenizer_dir):
    from streammind.processing import StreamMindProcessor

    model, processor = tiny
    save_model(model, processor, tmp_path)
    config = StreamMindConfig.from_pretrained(tmp_path)
    config.video_token_id = config.video_token_id + 1
    tok = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        StreamMindProcessor(tok, config)


def test_build_from_clip_and_llm_directories(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8))
    clip.save_pretrained(tmp_path / "clip")
    llm = MistralForCausalLM(MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, sliding_window=None))
    llm.save_pretrained(tmp_path / "llm")
    tiny_tokenizer.save_pretrained(tmp_path / "llm")
    model, processor = build_from_parts(tmp_path / "clip", tmp_path / "llm", gate_init_from_llm=True, gate_num_layers=1)
    assert torch.equal(model.vision.clip.embeddings.patch_embedding.weight, clip.embeddings.patch_embedding.weight)
    assert torch.equal(model.language_model.model.layers[1].mlp.down_proj.weight, llm.model.layers[1].mlp.down_proj.weight)
    assert torch.equal(model.gate.decoder.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    assert model.language_model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    save_model(model, processor, tmp_path / "out")
    loaded, _ = load_model(tmp_path / "out")
    assert isinstance(loaded, StreamMindForCausalLM)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_save_pretrained_passes_its_arguments_to_transformers(tiny, tmp_path):
    """`save_pretrained` hands its positional and keyword arguments to transformers' on the
    atomic path: a positional `state_dict` (after `is_main_process`) and a `variant` decide what
    lands in the directory — exactly those two tensors, in `model.v1.safetensors`."""
    from safetensors.torch import load_file

    model, _ = tiny
    keys = ["perception.pre_proj.bias", "gate.head.weight"]
    part = {k: model.state_dict()[k].clone() for k in keys}
    model.save_pretrained(tmp_path / "m", True, dict(part), variant="v1")  # transformers empties the dict it gets
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert "config.json" in files and "model.v1.safetensors" in files and "model.safetensors" not in files
    saved = load_file(tmp_path / "m" / "model.v1.safetensors")
    assert sorted(saved) == sorted(keys) and all(torch.equal(saved[k], part[k]) for k in keys)


def test_pushing_to_the_hub_keeps_the_plain_path(tiny, tmp_path, monkeypatch):
    """With `push_to_hub` the directory name is the hub repository's: transformers' method gets
    that very name and every argument unchanged, and no temporary directory is made."""
    from transformers import PreTrainedModel

    calls = []
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", lambda self, *args, **kwargs: calls.append((args, kwargs)))
    model, _ = tiny
    target = tmp_path / "user-repo"
    model.save_pretrained(target, False, push_to_hub=True, token="t0k")
    assert calls == [((target, False), {"push_to_hub": True, "token": "t0k"})]
    assert list(tmp_path.iterdir()) == []
    # Without it the save goes through a temporary directory beside the target.
    model.save_pretrained(target, False, token="t0k")
    (tmp_dir, *rest), kwargs = calls[1]
    assert tmp_dir != target and tmp_dir.parent == target.parent and rest == [False] and kwargs == {"token": "t0k"}
