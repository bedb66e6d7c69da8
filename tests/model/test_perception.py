"""Tests for the EPFE (`streammind.perception`): streaming equals parallel, state handling, layout.

Run: .venv/bin/python -m pytest tests/model/test_perception.py -q

The key invariant (docs/design.md §3): feeding a clip frame by frame through `step` gives the same
perception tokens as the parallel `forward`, and a clip can be split anywhere between the two
modes. Also: in-place state reset, mamba_ssm parameter names, the real-size parameter count
(built on the meta device), initialisation, gradients and bf16.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from streammind.perception import MambaMixer, PerceptionEncoder, PerceptionState

VISION_DIM, D_MODEL, D_STATE, D_CONV, EXPAND = 12, 16, 4, 4, 2
BATCH, FRAMES = 2, 11
ATOL = 1e-5


@pytest.fixture
def encoder() -> PerceptionEncoder:
    torch.manual_seed(0)
    model = PerceptionEncoder(VISION_DIM, D_MODEL, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND)
    # At this tiny width the default init leaves the SSM's contribution near 1e-5, too close to the
    # tolerance for the streaming tests to mean anything: amplify the mixer's inputs and steps.
    with torch.no_grad():
        model.block.mixer.in_proj.weight.mul_(3.0)
        model.block.mixer.x_proj.weight.mul_(3.0)
        model.block.mixer.dt_proj.bias.add_(1.0)
    return model.eval()


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(BATCH, FRAMES, VISION_DIM, generator=torch.Generator().manual_seed(1))


def step_through(encoder: PerceptionEncoder, features: torch.Tensor, state: PerceptionState) -> torch.Tensor:
    """Tokens [B, T, D] from `step` over every frame of features [B, T, Dv]."""
    return torch.stack([encoder.step(features[:, t], state)[0] for t in range(features.shape[1])], dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3e} > {atol:.0e}"


@torch.no_grad()
def test_step_matches_forward(encoder, features):
    tokens = encoder(features)
    state = encoder.init_state(BATCH)
    streamed = step_through(encoder, features, state)
    assert tokens.shape == streamed.shape == (BATCH, FRAMES, D_MODEL)
    assert_close(streamed, tokens)


@torch.no_grad()
def test_history_matters(encoder, features):
    # Guard against vacuous streaming tests: the last token must depend on the first frame by far
    # more than their tolerance.
    changed = features.clone()
    changed[:, 0] += 1.0
    assert (encoder(changed)[:, -1] - encoder(features)[:, -1]).abs().max() > 100 * ATOL


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 3, 7])
def test_parallel_then_step_matches_forward(encoder, features, split):
    tokens = encoder(features)
    state = encoder.init_state(BATCH)
    first = encoder(features[:, :split], state)
    rest = step_through(encoder, features[:, split:], state)
    assert_close(torch.cat([first, rest], dim=1), tokens)


@torch.no_grad()
@pytest.mark.parametrize("split", [2, 6])
def test_parallel_chunks_match_forward(encoder, features, split):
    tokens = encoder(features)
    state = encoder.init_state(BATCH)
    pieces = [encoder(features[:, :split], state), encoder(features[:, split:], state)]
    assert_close(torch.cat(pieces, dim=1), tokens)
    # The state after the chunks equals the state after stepping through the whole clip.
    stepped = encoder.init_state(BATCH)
    step_through(encoder, features, stepped)
    assert_close(state.ssm_state, stepped.ssm_state)
    assert_close(state.conv_state, stepped.conv_state)


@torch.no_grad()
def test_step_then_parallel_matches_forward(encoder, features):
    tokens = encoder(features)
    state = encoder.init_state(BATCH)
    first = step_through(encoder, features[:, :4], state)
    rest = encoder(features[:, 4:], state)
    assert_close(torch.cat([first, rest], dim=1), tokens)


@torch.no_grad()
def test_forward_without_state_keeps_nothing(encoder, features):
    assert_close(encoder(features), encoder(features), atol=0.0)


@torch.no_grad()
def test_reset_zeroes_in_place(encoder, features):
    state = encoder.init_state(BATCH)
    addresses = (state.conv_state.data_ptr(), state.ssm_state.data_ptr())
    step_through(encoder, features, state)
    assert state.ssm_state.abs().sum() > 0 and state.conv_state.abs().sum() > 0
    state.reset()
    assert (state.conv_state.data_ptr(), state.ssm_state.data_ptr()) == addresses
    assert not state.conv_state.any() and not state.ssm_state.any()
    # After a reset the stream starts afresh.
    assert_close(step_through(encoder, features, state), encoder(features))
    assert (state.conv_state.data_ptr(), state.ssm_state.data_ptr()) == addresses


def test_state_allocation_shapes_and_dtypes(encoder):
    state = encoder.init_state(3, dtype=torch.bfloat16)
    assert state.conv_state.shape == (3, encoder.d_inner, D_CONV)
    assert state.ssm_state.shape == (3, encoder.d_inner, D_STATE)
    assert state.conv_state.dtype == torch.bfloat16 and state.ssm_state.dtype == torch.float32
    assert state.batch_size == 3
    direct = PerceptionState.allocate(3, encoder.d_inner, D_CONV, D_STATE)
    assert direct.conv_state.dtype == torch.get_default_dtype() and direct.ssm_state.dtype == torch.float32


@torch.no_grad()
def test_state_mismatch_raises(encoder, features):
    with pytest.raises(ValueError, match="state has conv"):
        encoder(features, encoder.init_state(BATCH + 1))
    with pytest.raises(ValueError, match="features must be"):
        encoder(features[..., :-1])


def test_mixer_parameter_names_and_shapes_match_mamba_ssm():
    d_model, d_state, d_conv, expand = 64, 16, 4, 2
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    mixer = MambaMixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    # mamba_ssm.modules.mamba_simple.Mamba with its defaults (bias=False, conv_bias=True).
    expected = {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    assert {name: tuple(p.shape) for name, p in mixer.named_parameters()} == expected
    assert mixer.A_log._no_weight_decay and mixer.D._no_weight_decay


def test_encoder_parameter_names():
    names = {name for name, _ in PerceptionEncoder(VISION_DIM, D_MODEL).named_parameters()}
    mixer = {
        f"block.mixer.{n}"
        for n in (
            "in_proj.weight",
            "conv1d.weight",
            "conv1d.bias",
            "x_proj.weight",
            "dt_proj.weight",
            "dt_proj.bias",
            "A_log",
            "D",
            "out_proj.weight",
        )
    }
    outer = {
        "pre_proj.weight",
        "pre_proj.bias",
        "block.norm.weight",
        "block.norm.bias",
        "norm_f.weight",
        "norm_f.bias",
        "post_proj.weight",
        "post_proj.bias",
    }
    assert names == mixer | outer


def test_parameter_count_at_real_size():
    # The paper's EPFE: CLIP ViT-L (1024) -> Mistral-7B width (4096); d_inner 8192, dt_rank 256.
    with torch.device("meta"):
        encoder = PerceptionEncoder(vision_dim=1024, d_model=4096)
    assert encoder.d_inner == 8192 and encoder.block.mixer.dt_rank == 256
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in encoder.named_children()}
    assert counts == {
        "pre_proj": 1024 * 4096 + 4096,  # 4,198,400
        # norm 8,192 + in_proj 67,108,864 + conv 40,960 + x_proj 2,359,296 + dt_proj 2,105,344
        # + A_log 131,072 + D 8,192 + out_proj 33,554,432
        "block": 105_316_352,
        "norm_f": 2 * 4096,
        "post_proj": 4096 * 4096 + 4096,  # 16,781,312
    }
    assert sum(counts.values()) == 126_304_256


def test_init_weights_follows_mamba():
    torch.manual_seed(0)
    mixer = MambaMixer(32, d_state=8, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4)
    expected_A_log = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(64, -1)
    assert torch.equal(mixer.A_log.data, expected_A_log)
    assert torch.equal(mixer.D.data, torch.ones(64))
    dt = F.softplus(mixer.dt_proj.bias.data)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    bound = mixer.dt_rank**-0.5
    w = mixer.dt_proj.weight
    # U(-R^-0.5, R^-0.5) over 128 weights: within the bound and spanning it (both signs near it).
    assert w.abs().max() <= bound and w.max() > 0.9 * bound and w.min() < -0.9 * bound
    assert mixer.dt_proj.bias._no_reinit


@torch.no_grad()
def test_an_encoder_without_the_block_maps_each_frame_alone_with_an_empty_state(features):
    """temporal="none": the state is [B, 0, 0] (conv and SSM alike), `step` returns the same token
    as `forward` for each frame whatever came before, and leaves the state as it was."""
    torch.manual_seed(0)
    encoder = PerceptionEncoder(VISION_DIM, D_MODEL, temporal="none")
    state = encoder.init_state(2)
    assert encoder.block is None and encoder.d_inner == 0
    assert tuple(state.conv_state.shape) == (2, 0, 0) and tuple(state.ssm_state.shape) == (2, 0, 0)
    x = features[:2]
    parallel = encoder(x)
    for t in range(x.shape[1]):
        token, state = encoder.step(x[:, t], state)
        torch.testing.assert_close(token, parallel[:, t], atol=ATOL, rtol=0)
    assert tuple(state.conv_state.shape) == (2, 0, 0) and tuple(state.ssm_state.shape) == (2, 0, 0)


def test_init_weights_is_deterministic_given_the_rng(encoder):
    other = PerceptionEncoder(VISION_DIM, D_MODEL, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND)
    torch.manual_seed(123)
    encoder.init_weights()
    torch.manual_seed(123)
    other.init_weights()
    for (name, p), q in zip(encoder.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name


def test_gradients_reach_every_parameter(encoder, features):
    encoder.train()
    state = encoder.init_state(BATCH)
    # Continue from a non-zero state so the state path is part of the graph too; the in-place
    # state update after the scan must not break backward.
    with torch.no_grad():
        encoder(features[:, :3], state)
    tokens = encoder(features[:, 3:], state)
    tokens.square().mean().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


@torch.no_grad()
def test_bf16_forward_and_step(encoder, features):
    encoder = encoder.to(torch.bfloat16)
    x = features.to(torch.bfloat16)
    tokens = encoder(x)
    assert tokens.dtype == torch.bfloat16 and torch.isfinite(tokens.float()).all()
    state = encoder.init_state(BATCH)
    assert state.conv_state.dtype == torch.bfloat16 and state.ssm_state.dtype == torch.float32
    streamed = step_through(encoder, x, state)
    assert streamed.dtype == torch.bfloat16
    # Both paths round the same intermediates to bf16; a few bf16 ulps of slack at |tokens| ~ 1.
    assert_close(streamed.float(), tokens.float(), atol=5e-2)


def test_defaults_are_mamba_ssm_s():
    """Mamba(d_model) defaults: d_state 16, d_conv 4, expand 2, dt_rank ceil(D / 16), initial steps
    in [0.001, 0.1]; the EPFE's LeakyReLU slope 0.01 and LayerNorm eps 1e-5."""
    torch.manual_seed(0)
    mixer = MambaMixer(48)
    assert (mixer.d_model, mixer.d_state, mixer.d_conv, mixer.expand, mixer.d_inner, mixer.dt_rank) == (48, 16, 4, 2, 96, 3)
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert 0.001 * (1 - 1e-4) <= dt.min() and dt.max() <= 0.1 * (1 + 1e-4) and dt.max() > 0.02  # spans the range
    assert MambaMixer(48, dt_rank=5).dt_rank == 5
    encoder = PerceptionEncoder(VISION_DIM, D_MODEL)
    assert encoder.leaky_relu_slope == 0.01 and encoder.d_model == D_MODEL and encoder.vision_dim == VISION_DIM
    assert encoder.block.norm.eps == encoder.norm_f.eps == 1e-5
    sized = PerceptionEncoder(VISION_DIM, D_MODEL, d_state=3, d_conv=2, expand=3, dt_rank=2, norm_eps=1e-3)
    m = sized.block.mixer
    assert (m.d_state, m.d_conv, m.d_inner, m.dt_rank) == (3, 2, 48, 2)
    assert sized.block.norm.eps == sized.norm_f.eps == 1e-3


@torch.no_grad()
def test_forward_and_step_compose_the_layers_as_documented(features):
    """F_t = post_proj(LeakyReLU(norm_f(h_t + mixer(norm(h))_t))), h = LeakyReLU(pre_proj(c)),
    with the encoder's own slope (0.2 here, so that PyTorch's default 0.01 would differ)."""
    torch.manual_seed(1)
    encoder = PerceptionEncoder(VISION_DIM, D_MODEL, d_state=D_STATE, leaky_relu_slope=0.2).eval()
    h = F.leaky_relu(encoder.pre_proj(features), 0.2)
    r = h + encoder.block.mixer(encoder.block.norm(h))
    expected = encoder.post_proj(F.leaky_relu(encoder.norm_f(r), 0.2))
    assert_close(encoder(features), expected)
    state = encoder.init_state(BATCH)
    assert_close(step_through(encoder, features, state), expected)


@torch.no_grad()
@pytest.mark.parametrize("pieces", [[1, 1, 2, 1, 6], [2, 2, 2, 5]])
def test_pieces_shorter_than_the_conv_continue_the_state(encoder, features, pieces):
    """Chunks of fewer frames than the conv width must carry the older inputs in the conv state."""
    state = encoder.init_state(BATCH)
    out, start = [], 0
    for n in pieces:
        out.append(encoder(features[:, start : start + n], state))
        start += n
    assert_close(torch.cat(out, dim=1), encoder(features))


def test_states_follow_the_model_device_and_keep_fp32_ssm(encoder):
    meta = PerceptionEncoder(VISION_DIM, D_MODEL, d_state=D_STATE).to("meta")
    state = meta.init_state(2)
    assert state.conv_state.device.type == state.ssm_state.device.type == "meta"
    assert meta.init_state(2, device="cpu").conv_state.device.type == "cpu"
    direct = PerceptionState.allocate(1, 4, 3, 2, device="meta")
    assert direct.conv_state.device.type == direct.ssm_state.device.type == "meta"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as train.build does while it initialises a model
    try:
        state = encoder.init_state(2, dtype=torch.bfloat16)
    finally:
        torch.set_default_dtype(previous)
    assert state.ssm_state.dtype == torch.float32 and state.conv_state.dtype == torch.bfloat16


def test_state_checks_both_buffers(encoder, features):
    good = encoder.init_state(BATCH)
    bad_ssm = PerceptionState(conv_state=good.conv_state, ssm_state=torch.zeros(BATCH, encoder.d_inner, D_STATE + 1))
    with pytest.raises(ValueError, match="state has conv"):
        encoder(features, bad_ssm)
    with pytest.raises(ValueError, match="feature must be"):
        encoder.step(features[:, :1], good)  # [B, 1, Dv]: one dimension too many
    with pytest.raises(ValueError, match="feature must be"):
        encoder.step(features[:, 0, :-1], good)


def test_bias_flags_are_honoured():
    plain = MambaMixer(16)
    assert plain.in_proj.bias is None and plain.out_proj.bias is None and plain.x_proj.bias is None
    assert plain.dt_proj.bias is not None and plain.conv1d.bias is not None
    flipped = MambaMixer(16, bias=True, conv_bias=False)
    assert flipped.in_proj.bias is not None and flipped.out_proj.bias is not None and flipped.conv1d.bias is None
    from streammind.perception import PerceptionBlock

    assert PerceptionBlock(16, plain).norm.eps == 1e-5
