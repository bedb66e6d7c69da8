"""Tiny source checkpoints in the layouts StreamMind converts from, for the conversion tests.

`make_videollama2` and `make_original` write a VideoLLaMA2-7B or an original StreamMind
checkpoint at toy sizes with the source's exact key names (sharded safetensors with an index,
sharded or single .bin) and return it with its tensors, so that a test can compare what the
converted model computes with what the source tensors compute.
"""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

from streammind.apps.convert import PROJECTOR_PREFIX, TOWER_PREFIX

# The tower is wider than the LLM (48 vs 32), so the EPFE's pre-net is not square and the
# converter must read the LLM width from the right dimension.
CLIP = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=8)
LLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1e6)
# The original gate: MistralConfig() defaults except its sizes (tiny here) and vocabulary 2.
GATE = dict(vocab_size=2, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e4)
# EPFE sizes deliberately off the defaults, so the converter must read them from the shapes.
D_STATE, D_CONV, EXPAND, DT_RANK = 4, 3, 3, 4
CLS = PROJECTOR_PREFIX + "cls_net.cls_model."
MIXER = PROJECTOR_PREFIX + "mamba_model.ssms.0.mixer."
GATE_HEADS = GATE["num_attention_heads"]


# ----------------------------------------------------------------------------- source checkpoints


def _randomise(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Distinct random values everywhere (norm weights around 1), so a mis-mapped tensor shows."""
    out = {}
    for key, t in state.items():
        noise = torch.randn(t.shape, generator=generator)
        out[key] = 1.0 + 0.1 * noise if "norm" in key and key.endswith("weight") else 0.3 * noise
    return out


def _clip_state(g):
    return {TOWER_PREFIX + k: v for k, v in _randomise(CLIPVisionModel(CLIPVisionConfig(**CLIP)).state_dict(), g).items()}


def _llm_state(vocab, g):
    return _randomise(MistralForCausalLM(MistralConfig(vocab_size=vocab, **LLM)).state_dict(), g)


def _epfe_state(g, inner="fc3."):
    """The original EPFE tensors under model.mm_projector (mamba_ssm's Block/Mamba names)."""
    D, Dv, Din = LLM["hidden_size"], CLIP["hidden_size"], EXPAND * LLM["hidden_size"]

    def r(*shape, scale=0.3):
        return scale * torch.randn(*shape, generator=g)

    return {
        f"{PROJECTOR_PREFIX}pre_net.{inner}weight": r(D, Dv),
        f"{PROJECTOR_PREFIX}pre_net.{inner}bias": r(D),
        f"{PROJECTOR_PREFIX}mamba_model.ssms.0.norm.weight": 1 + r(D, scale=0.1),
        f"{PROJECTOR_PREFIX}mamba_model.ssms.0.norm.bias": r(D),
        MIXER + "in_proj.weight": r(2 * Din, D),
        MIXER + "conv1d.weight": r(Din, 1, D_CONV),
        MIXER + "conv1d.bias": r(Din),
        MIXER + "x_proj.weight": r(DT_RANK + 2 * D_STATE, Din),
        MIXER + "dt_proj.weight": r(Din, DT_RANK),
        MIXER + "dt_proj.bias": math.log(math.expm1(0.05)) + r(Din, scale=0.5),
        MIXER + "A_log": torch.log(torch.arange(1, D_STATE + 1).float()).expand(Din, -1) + r(Din, D_STATE, scale=0.1),
        MIXER + "D": 1 + r(Din, scale=0.1),
        MIXER + "out_proj.weight": r(D, Din),
        f"{PROJECTOR_PREFIX}mamba_model.norm_fn.weight": 1 + r(D, scale=0.1),
        f"{PROJECTOR_PREFIX}mamba_model.norm_fn.bias": r(D),
        f"{PROJECTOR_PREFIX}post_net.{inner}weight": r(D, D),
        f"{PROJECTOR_PREFIX}post_net.{inner}bias": r(D),
    }


def _gate_state(g):
    return {CLS + k: v for k, v in _randomise(MistralForCausalLM(MistralConfig(**GATE)).state_dict(), g).items()}


def _stc_state(g):
    """A few VideoLLaMA2 STC-connector tensors (names from its RegStage / Conv3d / readout)."""
    D, Dv = LLM["hidden_size"], CLIP["hidden_size"]
    return {
        PROJECTOR_PREFIX + "s1.b1.conv1.conv.weight": torch.randn(D, Dv, 1, 1, generator=g),
        PROJECTOR_PREFIX + "sampler.0.weight": torch.randn(D, D, 2, 2, 2, generator=g),
        PROJECTOR_PREFIX + "sampler.0.bias": torch.randn(D, generator=g),
        PROJECTOR_PREFIX + "readout.0.weight": torch.randn(D, D, generator=g),
    }


def _source_config(vocab, tower, projector):
    return dict(
        architectures=["Videollama2MistralForCausalLM"],
        model_type="videollama2_mistral",
        vocab_size=vocab,
        hidden_act="silu",
        max_position_embeddings=4096,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
        mm_vision_tower=tower,
        mm_hidden_size=CLIP["hidden_size"],
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_projector_type=projector,
        image_aspect_ratio="pad",
        num_frames=8,
        **LLM,
    )


def write_checkpoint(directory, tensors, config, tokenizer, fmt):
    """Write `tensors` as `fmt`: safetensors-sharded / bin-sharded (3 mixed shards + index) or bin."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "config.json", "w") as f:
        json.dump(config, f)
    tokenizer.save_pretrained(directory)
    keys = sorted(tensors)
    if fmt == "bin":
        torch.save({k: tensors[k].contiguous() for k in keys}, directory / "pytorch_model.bin")
        return
    ext, index = ("safetensors", "model.safetensors.index.json") if fmt == "safetensors-sharded" else ("bin", "pytorch_model.bin.index.json")
    n = 3
    weight_map = {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.{ext}" if ext == "safetensors" else f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        # Round-robin over sorted keys: every shard mixes LLM, tower and projector tensors.
        shard = {k: tensors[k].contiguous() for k in keys[i::n]}
        save_file(shard, directory / name) if ext == "safetensors" else torch.save(shard, directory / name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(directory / index, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def make_videollama2(tmp_path, tokenizer, fmt, tower, with_tower=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    tensors = {**_llm_state(vocab, g), **_stc_state(g), **(_clip_state(g) if with_tower else {})}
    src = tmp_path / f"videollama2-{fmt}"
    write_checkpoint(src, tensors, _source_config(vocab, str(tower), "stc_connector"), tokenizer, fmt)
    return src, tensors


def make_original(tmp_path, tokenizer, fmt, inner="fc3.", seed=1, edit=None):
    """An original StreamMind checkpoint: LLM rows = Mistral vocabulary (not resized for the two
    special tokens), `</silence>` / `</response>` in the tokenizer, the tower config in a folder
    named by a relative `mm_vision_tower`."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    tensors = {**_llm_state(vocab, g), **_clip_state(g), **_epfe_state(g, inner), **_gate_state(g)}
    if edit is not None:
        edit(tensors)
    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("</silence>", "</response>")], special_tokens=True)
    src = tmp_path / f"original-{fmt}"
    write_checkpoint(src, tensors, _source_config(vocab, "clip-tower", "mamba"), tok, fmt)
    CLIPVisionConfig(**CLIP).save_pretrained(src / "clip-tower")
    return src, tensors
