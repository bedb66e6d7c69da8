"""Checkpoint import: VideoLLaMA2-7B and original StreamMind layouts at tiny sizes.

Each test writes a tiny source checkpoint with the source's exact key names (sharded
safetensors with an index, sharded or single .bin), converts it, and checks that the result
computes what the source computes: the CLIP features and the LLM logits against HF models
built from the source tensors, the EPFE against a plain-torch reference written here (a
sequential Mamba-1 scan, independent of streammind's modules) and the gate logits against
a HF MistralForCausalLM built from the source gate's tensors.

Run: .venv/bin/python -m pytest tests/apps/test_convert.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

from streammind import StreamingSession, load_model
from streammind.apps import convert
from streammind.apps.cli import main as cli_main
from streammind.apps.convert import PROJECTOR_PREFIX, TOWER_PREFIX, ConversionError, load_streammind_original, load_videollama2
from tests.source_checkpoints import (
    CLIP,
    CLS,
    D_CONV,
    D_STATE,
    DT_RANK,
    EXPAND,
    GATE,
    GATE_HEADS,
    LLM,
    MIXER,
    _clip_state,
    make_original,
    make_videollama2,
)


@pytest.fixture
def base_tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def tower_config_dir(tmp_path):
    """A local CLIP config directory, as an offline `mm_vision_tower` points to."""
    path = tmp_path / "clip-tiny"
    CLIPVisionConfig(**CLIP).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- references


def _strip(tensors, prefix):
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def ref_clip_features(tensors, pixel_values):
    """Layer -2 of a HF CLIPVisionModel holding the source tower, CLS dropped, mean over patches."""
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP)).eval()
    clip.load_state_dict(_strip(tensors, TOWER_PREFIX))
    with torch.no_grad():
        return clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:].mean(1)


def ref_llm_logits(tensors, vocab, input_ids):
    llm = MistralForCausalLM(MistralConfig(vocab_size=vocab, **LLM)).eval()
    llm.load_state_dict({k: v for k, v in tensors.items() if k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head."))})
    with torch.no_grad():
        return llm(input_ids).logits


def ref_mamba_mixer(x, p):
    """Mamba-1 mixer, sequential, float64: x [T, D] -> [T, D] (Gu & Dao, Alg. 2)."""
    T = x.shape[0]
    u, z = (x @ p["in_proj.weight"].T).chunk(2, dim=-1)  # [T, Din] each
    w = p["conv1d.weight"][:, 0, :]  # [Din, W]
    W = w.shape[1]
    padded = F.pad(u.T, (W - 1, 0))  # causal: [Din, W - 1 + T]
    conv = sum(w[:, k : k + 1] * padded[:, k : k + T] for k in range(W)) + p["conv1d.bias"][:, None]
    u = F.silu(conv.T)  # [T, Din]
    dt, B, C = (u @ p["x_proj.weight"].T).split([DT_RANK, D_STATE, D_STATE], dim=-1)
    dt = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # [T, Din]
    A = -torch.exp(p["A_log"])  # [Din, N]
    h = torch.zeros_like(A)
    ys = []
    for t in range(T):
        h = torch.exp(dt[t, :, None] * A) * h + dt[t, :, None] * B[t][None, :] * u[t, :, None]
        ys.append(h @ C[t] + p["D"] * u[t])
    y = torch.stack(ys) * F.silu(z)
    return y @ p["out_proj.weight"].T


def ref_epfe(tensors, features, inner="fc3."):
    """The original Video_Mamba_seq minus pooling: PreNet, one mamba_ssm Block + norm_fn, PostNet."""
    p = {k: v.double() for k, v in _strip(tensors, PROJECTOR_PREFIX).items()}
    x = features.double()
    h = F.leaky_relu(x @ p[f"pre_net.{inner}weight"].T + p[f"pre_net.{inner}bias"], 0.01)
    normed = F.layer_norm(h, h.shape[-1:], p["mamba_model.ssms.0.norm.weight"], p["mamba_model.ssms.0.norm.bias"], 1e-5)
    r = h + ref_mamba_mixer(normed, _strip(p, "mamba_model.ssms.0.mixer."))
    out = F.layer_norm(r, r.shape[-1:], p["mamba_model.norm_fn.weight"], p["mamba_model.norm_fn.bias"], 1e-5)
    return (F.leaky_relu(out, 0.01) @ p[f"post_net.{inner}weight"].T + p[f"post_net.{inner}bias"]).float()


def ref_gate_logits(tensors, tokens):
    """The released demo's gate call: each perception token alone, [1, 1, D] -> logits[0, -1]."""
    gate = MistralForCausalLM(MistralConfig(**GATE)).eval()
    gate.load_state_dict(_strip(tensors, CLS))
    with torch.no_grad():
        return torch.stack([gate(inputs_embeds=tok.view(1, 1, -1)).logits[0, -1] for tok in tokens])


def _pixels(n=5, seed=3):
    return torch.randn(n, 3, CLIP["image_size"], CLIP["image_size"], generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- tests: VideoLLaMA2


@pytest.mark.parametrize("fmt", ["safetensors-sharded", "bin-sharded"])
def test_videollama2_keeps_llm_and_tower_and_reports_the_stc_projector(tmp_path, base_tokenizer, tower_config_dir, fmt):
    src, tensors = make_videollama2(tmp_path, base_tokenizer, fmt, tower_config_dir)
    model, processor, report = load_videollama2(src, dtype=torch.float32, gate_num_layers=1, progress=False)

    vocab = len(base_tokenizer)
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.language_model(ids).logits
        features = model.vision(_pixels())
    torch.testing.assert_close(ours[..., :vocab], ref_llm_logits(tensors, vocab, ids), rtol=0, atol=1e-5)
    torch.testing.assert_close(features, ref_clip_features(tensors, _pixels()), rtol=0, atol=1e-5)

    stc = sorted(k for k in tensors if k.startswith(PROJECTOR_PREFIX))
    assert sorted(k for k, why in report.ignored.items() if "STC" in why) == stc
    assert len(report.mapped) == len(tensors) - len(stc)
    # `<video>` is added after the Mistral vocabulary; the gate starts fresh in query mode.
    assert processor.video_token_id == model.config.video_token_id == vocab == report.tokens["<video>"]
    assert model.config.text_config.vocab_size == vocab + 1 == model.language_model.get_input_embeddings().weight.shape[0]
    assert model.config.gate_mode == "query" and model.config.gate_config.vocab_size == vocab + 1
    assert model.config.vision_feature_layer == -2 and model.config.frame_pooling == "mean" and model.config.image_preprocess == "pad"
    assert "perception" in report.initialised and "gate" in report.initialised


def test_videollama2_tower_from_clip_dir_and_gate_from_llm(tmp_path, base_tokenizer, tower_config_dir):
    g = torch.Generator().manual_seed(7)
    clip_dir = tmp_path / "clip-weights"
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    clip.load_state_dict(_strip(_clip_state(g), TOWER_PREFIX))
    clip.save_pretrained(clip_dir)
    # No tower tensors in the checkpoint, and mm_vision_tower names nothing we can read.
    src, tensors = make_videollama2(tmp_path, base_tokenizer, "bin", "acme/unknown-tower", with_tower=False)

    model, _, report = load_videollama2(src, clip=clip_dir, dtype=torch.float32, gate_num_layers=2, gate_init_from_llm=True, progress=False)

    theirs = clip.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.vision.clip.state_dict().items())
    llm, gate = model.language_model.model, model.gate.decoder
    for i in range(2):
        assert torch.equal(gate.layers[i].self_attn.q_proj.weight, llm.layers[i].self_attn.q_proj.weight)
    assert torch.equal(gate.embed_tokens.weight, llm.embed_tokens.weight)
    assert torch.equal(gate.layers[0].mlp.down_proj.weight, tensors["model.layers.0.mlp.down_proj.weight"])


def test_videollama2_without_a_usable_vision_config_says_what_to_pass(tmp_path, base_tokenizer):
    src, _ = make_videollama2(tmp_path, base_tokenizer, "bin", "acme/unknown-tower")
    with pytest.raises(ConversionError, match="--clip DIR"):
        load_videollama2(src, dtype=torch.float32, progress=False)


def test_known_tower_name_gives_the_clip_l336_config(tmp_path):
    from streammind.apps.convert import vision_config_from_source

    config = vision_config_from_source({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, src=tmp_path)
    assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size) == (1024, 24, 336, 14)


# ----------------------------------------------------------------------------- tests: original StreamMind


@pytest.mark.parametrize("fmt,inner", [("safetensors-sharded", "fc3."), ("bin-sharded", "fc3."), ("bin", "")])
def test_original_reproduces_epfe_gate_and_llm(tmp_path, base_tokenizer, fmt, inner):
    src, tensors = make_original(tmp_path, base_tokenizer, fmt, inner=inner)
    model, processor, report = load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)

    assert not report.ignored and len(report.mapped) == len(tensors)  # every tensor mapped
    pixels = _pixels(6)
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=pixels[None])  # [1, T, D]
        gate = model.gate_logits(tokens, torch.ones(1, 6, dtype=torch.bool), None, None)  # [1, T, 2]
    expected_tokens = ref_epfe(tensors, ref_clip_features(tensors, pixels), inner)
    torch.testing.assert_close(tokens[0], expected_tokens, rtol=0, atol=2e-5)
    torch.testing.assert_close(gate[0], ref_gate_logits(tensors, tokens[0]), rtol=0, atol=1e-5)

    vocab = len(base_tokenizer)
    ids = torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.language_model(ids).logits
    torch.testing.assert_close(ours[..., :vocab], ref_llm_logits(tensors, vocab, ids), rtol=0, atol=1e-5)

    cfg = model.config
    assert cfg.gate_mode == "per_frame" and cfg.gate_config.vocab_size == 2 and cfg.gate_config.num_hidden_layers == 2
    assert (cfg.perception_d_state, cfg.perception_d_conv, cfg.perception_expand, cfg.perception_dt_rank) == (D_STATE, D_CONV, EXPAND, DT_RANK)
    assert torch.equal(model.gate.head.bias, torch.zeros(2))
    # The special tokens keep their ids (right after the Mistral vocabulary); `<video>` follows.
    assert report.tokens == {"</silence>": vocab, "</response>": vocab + 1, "<video>": vocab + 2}
    assert processor.video_token_id == cfg.video_token_id == vocab + 2 == cfg.text_config.vocab_size - 1


def test_original_round_trips_through_the_cli_and_streams(tmp_path, base_tokenizer):
    src, tensors = make_original(tmp_path, base_tokenizer, "safetensors-sharded")
    dst = tmp_path / "converted"
    assert convert.main(["--from", "streammind-original", str(src), str(dst), "--dtype", "float32", "--gate-heads", str(GATE_HEADS), "--no-progress"]) == 0

    model, processor = load_model(dst)
    report = json.loads((dst / "conversion_report.json").read_text())
    assert report["source_format"] == "streammind-original" and len(report["mapped"]) == len(tensors)
    pixels = _pixels(4)
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=pixels[None])[0]
    torch.testing.assert_close(tokens, ref_epfe(tensors, ref_clip_features(tensors, pixels)), rtol=0, atol=2e-5)

    # The streaming runtime runs the per-frame gate on the converted weights, frame by frame.
    session = StreamingSession(model, processor, query="Tell me when something changes.", max_new_tokens=2)
    frames = (torch.rand(4, 20, 24, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    probs = []
    for t, frame in enumerate(frames):
        session.push(frame, float(t))
        probs.append(session.last_prob)
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=processor.preprocess_frames(frames)[None])[0]
    expected = torch.softmax(ref_gate_logits(tensors, tokens), -1)[:, 1]
    torch.testing.assert_close(torch.tensor(probs), expected, rtol=0, atol=1e-5)


def test_default_dtype_is_bfloat16_throughout(tmp_path, base_tokenizer):
    src, tensors = make_original(tmp_path, base_tokenizer, "bin")
    model, _, _ = load_streammind_original(src, gate_heads=GATE_HEADS, progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    vocab = len(base_tokenizer)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        ours = model.language_model(ids).logits[..., :vocab].float()
    ref = ref_llm_logits(tensors, vocab, ids)
    assert (ours - ref).norm() / ref.norm() < 0.05  # bf16 rounding of the same weights, not a different model


def test_cli_exits_2_with_the_reason(tmp_path, base_tokenizer, capsys):
    src, _ = make_original(tmp_path, base_tokenizer, "bin", edit=lambda t: t.pop(PROJECTOR_PREFIX + "mamba_model.norm_fn.bias"))
    assert cli_main(["convert", "--from", "streammind-original", str(src), str(tmp_path / "out"), "--gate-heads", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streammind convert: error: ") and "perception.norm_f.bias" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- tests: failing loudly


def test_unmapped_key_raises_with_its_name_unless_ignored(tmp_path, base_tokenizer):
    extra = PROJECTOR_PREFIX + "cls_net.extra_head.weight"
    src, _ = make_original(tmp_path, base_tokenizer, "bin", edit=lambda t: t.update({extra: torch.zeros(2, 2)}))
    with pytest.raises(ConversionError, match="unmapped") as exc:
        load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    assert f"1 unmapped source key(s): {extra}" in str(exc.value) and "(-> None" not in str(exc.value)
    _, _, report = load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, ignore_prefixes=[extra], progress=False)
    assert report.ignored == {extra: "--ignore-prefix"}


def test_missing_keys_raise_with_every_name(tmp_path, base_tokenizer):
    gone = [MIXER + "D", CLS + "model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    src, _ = make_original(tmp_path, base_tokenizer, "bin", edit=lambda t: [t.pop(k) for k in gone])
    with pytest.raises(ConversionError, match="no source tensor") as exc:
        load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    for name in ("perception.block.mixer.D", "gate.decoder.layers.1.mlp.up_proj.weight", "language_model.model.layers.1.self_attn.o_proj.weight"):
        assert name in str(exc.value)


def test_unknown_pre_net_layout_lists_what_was_found(tmp_path, base_tokenizer):
    src, _ = make_original(tmp_path, base_tokenizer, "bin", inner="proj.")
    with pytest.raises(ConversionError, match="unsupported layout") as exc:
        load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    assert PROJECTOR_PREFIX + "pre_net.proj.weight" in str(exc.value) and "fc3." in str(exc.value)


def test_wrong_gate_heads_fails_on_shapes_not_silently(tmp_path, base_tokenizer):
    src, _ = make_original(tmp_path, base_tokenizer, "bin")
    # The head count is not in the shapes; one that cannot split the width is rejected up front.
    with pytest.raises(ConversionError, match="gate-heads"):
        load_streammind_original(src, dtype=torch.float32, gate_heads=3, progress=False)


def test_videollama2_checkpoint_given_as_original_gets_a_hint(tmp_path, base_tokenizer, tower_config_dir):
    src, _ = make_videollama2(tmp_path, base_tokenizer, "bin", tower_config_dir)
    with pytest.raises(ConversionError, match="--from videollama2") as exc:
        load_streammind_original(src, dtype=torch.float32, progress=False)
    assert str(exc.value).endswith("] (no EPFE at all: is this a VideoLLaMA2 checkpoint? use --from videollama2)")


# ----------------------------------------------------------------------------- tests: memory


@pytest.mark.parametrize("fmt", ["safetensors-sharded", "bin-sharded"])
def test_one_shard_open_at_a_time(tmp_path, base_tokenizer, monkeypatch, fmt):
    src, _ = make_original(tmp_path, base_tokenizer, fmt)
    real_open = convert.open_shard
    state = {"open": 0, "max_open": 0, "opened": []}

    def counting_open(path):
        class Counted:
            def __enter__(self):
                state["open"] += 1
                state["max_open"] = max(state["max_open"], state["open"])
                state["opened"].append(path.name)
                self._ctx = real_open(path)
                return self._ctx.__enter__()

            def __exit__(self, *exc):
                state["open"] -= 1
                return self._ctx.__exit__(*exc)

        return Counted()

    monkeypatch.setattr(convert, "open_shard", counting_open)
    load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    shards = sorted(p.name for p in src.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert len(shards) == 3 and state["max_open"] == 1
    # Each shard is opened twice: once to read names and shapes, once to copy its tensors.
    assert sorted(state["opened"]) == sorted(shards * 2)


def test_conversion_errors_say_what_and_why(tmp_path, base_tokenizer):
    """A partial original checkpoint (EPFE pre-net present) gets no VideoLLaMA2 hint; a key that
    maps outside the model, and a tensor of the wrong shape, are listed with both names and shapes."""
    src, _ = make_original(tmp_path / "a", base_tokenizer, "bin", edit=lambda t: t.pop(MIXER + "A_log"))
    with pytest.raises(ConversionError, match=r"not an original StreamMind checkpoint: missing \['model.mm_projector") as exc:
        load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    assert str(exc.value).endswith("A_log']")  # no hint after the list
    far = "model.layers.9.self_attn.q_proj.weight"  # the LLM has 2 layers

    def edit(t):
        t[far] = torch.zeros(32, 32)
        t[MIXER + "D"] = torch.zeros(7)

    src, _ = make_original(tmp_path / "b", base_tokenizer, "bin", edit=edit)
    with pytest.raises(ConversionError) as exc:
        load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    message = str(exc.value)
    assert f"1 unmapped source key(s): {far} (-> language_model.{far}, not in the target model)" in message
    assert f"1 shape mismatch(es): {MIXER}D [7] -> perception.block.mixer.D [96]" in message
    src, _ = make_original(tmp_path / "c", base_tokenizer, "bin", inner="proj.")
    pre = PROJECTOR_PREFIX + "pre_net."
    with pytest.raises(ConversionError, match="supported: " + ", ".join(f"{pre}{i}{{weight,bias}}" for i in ("fc3.", "fc.", "linear.", "")).replace(".", r"\.").replace("{", r"\{").replace("}", r"\}")):
        load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)


def test_ignored_keys_are_reported_with_their_reason(tmp_path, base_tokenizer):
    g = torch.Generator().manual_seed(7)
    clip_dir = tmp_path / "clip-weights"
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    clip.load_state_dict(_strip(_clip_state(g), TOWER_PREFIX))
    clip.save_pretrained(clip_dir)
    # Older checkpoints also hold buffers that are rebuilt at construction.
    buffers = {TOWER_PREFIX + "vision_model.embeddings.position_ids": torch.arange(5)[None],
               "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}
    src, tensors = make_original(tmp_path, base_tokenizer, "bin", edit=lambda t: t.update(buffers))
    _, _, report = load_streammind_original(src, clip=clip_dir, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    tower = {k for k in tensors if k.startswith(TOWER_PREFIX)} - set(buffers)
    assert {k: report.ignored[k] for k in buffers} == dict.fromkeys(buffers, "buffer recomputed at construction")
    assert {k: report.ignored[k] for k in tower} == dict.fromkeys(tower, "vision tower taken from --clip")


def test_original_gate_config_is_the_released_one(tmp_path, base_tokenizer):
    src, _ = make_original(tmp_path, base_tokenizer, "bin")
    model, _, _ = load_streammind_original(src, dtype=torch.float32, gate_heads=GATE_HEADS, progress=False)
    gate = model.config.gate_config
    assert gate.sliding_window is None  # the released gate attends its whole window
    assert (gate.num_attention_heads, gate.num_key_value_heads, gate.head_dim, gate.vocab_size) == (4, 2, 8, 2)
    assert (gate.hidden_act, gate.rms_norm_eps, gate.max_position_embeddings) == ("silu", 1e-6, 131072)


def test_original_sizes_are_read_from_the_shapes_alone():
    """EPFE sizes come from the tensors: d_state and the mixer width from A_log [d_inner, N],
    d_conv from conv1d [d_inner, 1, W], dt_rank from dt_proj [d_inner, R], expand = d_inner /
    the pre-net's output width; the gate's sizes from its embedding, MLP, k_proj and layer count.
    All chosen off the defaults (expand 3, not 2)."""
    gate = CLS
    shapes = {
        MIXER + "A_log": (48, 5),
        MIXER + "conv1d.weight": (48, 1, 6),
        MIXER + "dt_proj.weight": (48, 7),
        PROJECTOR_PREFIX + "pre_net.fc.weight": (16, 40),
        PROJECTOR_PREFIX + "pre_net.fc.bias": (16,),
        gate + "model.embed_tokens.weight": (2, 32),
        gate + "model.layers.0.mlp.gate_proj.weight": (40, 32),
        gate + "model.layers.0.self_attn.k_proj.weight": (16, 32),
        gate + "model.layers.1.self_attn.k_proj.weight": (16, 32),
        gate + "model.layers.2.self_attn.k_proj.weight": (16, 32),
    }
    perception, gate_config = convert._original_sizes(shapes, gate_heads=4)
    assert perception == {"perception_d_state": 5, "perception_d_conv": 6, "perception_expand": 3, "perception_dt_rank": 7}
    assert (gate_config.vocab_size, gate_config.hidden_size, gate_config.intermediate_size, gate_config.num_hidden_layers) == (2, 32, 40, 3)
    assert (gate_config.num_attention_heads, gate_config.head_dim, gate_config.num_key_value_heads) == (4, 8, 2)


def test_two_source_keys_for_one_target_are_listed_as_mapped_twice():
    """The first key to reach a target takes it; every later one is listed as `key -> target`,
    sorted, under one "mapped twice" problem (with the missing targets reported alongside)."""
    target = {"w": torch.zeros(2), "v": torch.zeros(3)}
    shapes = {"a": (2,), "c": (2,), "b": (2,)}
    with pytest.raises(ConversionError) as exc:
        convert._plan(shapes, lambda key: "w", target, required={"w", "v"}, ignore=lambda key: None)
    assert str(exc.value) == (
        "cannot convert the checkpoint:\n"
        "  1 target parameter(s) with no source tensor: v\n"
        "  2 target(s) mapped twice: b -> w, c -> w"
    )
    plan = convert._plan({"a": (2,)}, lambda key: "w", target, required={"w"}, ignore=lambda key: None)
    assert plan.mapping == {"a": "w"}
