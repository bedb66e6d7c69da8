"""Parity tests for the selective-scan and causal-conv1d ops.

Run: .venv/bin/python -m pytest tests/ops/test_selective_scan.py -q
Kernel parity only (needs CUDA plus mamba-ssm / causal-conv1d): add `-m kernels -s` to see the diffs.

What is checked:
- the chunked reference `selective_scan_ref` against the per-step oracle `selective_scan_sequential`:
  outputs, final states and every gradient, over a deliberate grid of optional inputs and lengths;
- `selective_state_update` stepped T times against the scan, and scan continuation from a state;
- the initial-state correction used by the kernel path, on CPU against the reference;
- `causal_conv1d_ref` against nn.Conv1d / F.conv1d, its state continuation and step update;
- dispatch: `override_impl` wins, "kernel" without the package raises an error naming it;
- kernel vs reference, forward and backward (marked `kernels`, skipped without CUDA + kernels).
"""

from __future__ import annotations

import importlib
import logging
import uuid

import pytest
import torch
import torch.nn.functional as F

from streammind.ops import (
    HAS_CAUSAL_CONV1D_KERNELS,
    HAS_MAMBA_KERNELS,
    causal_conv1d,
    causal_conv1d_final_state,
    causal_conv1d_ref,
    causal_conv1d_update,
    selective_scan,
    selective_scan_ref,
    selective_scan_sequential,
    selective_state_update,
)

# The package re-exports functions named like their modules, so fetch the modules themselves.
scan_module = importlib.import_module("streammind.ops.selective_scan")
conv_module = importlib.import_module("streammind.ops.causal_conv1d")

REDUCED_OVER_BATCH_AND_TIME = ("A", "D", "delta_bias")
TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
# Kernel vs reference, from mamba_ssm's tests/ops/test_selective_scan.py.
KERNEL_TOLERANCES = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}

needs_mamba_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_MAMBA_KERNELS), reason="needs CUDA and mamba_ssm")
needs_conv_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_CAUSAL_CONV1D_KERNELS), reason="needs CUDA and causal_conv1d"
)


def make_scan_inputs(
    batch: int = 2,
    d_inner: int = 6,
    d_state: int = 4,
    seqlen: int = 37,
    has_D: bool = True,
    has_z: bool = True,
    has_delta_bias: bool = True,
    has_initial_state: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random leaf tensors (requires_grad) in mamba_ssm's test ranges; absent optionals are None."""
    generator = torch.Generator().manual_seed(seed)
    # A and the per-channel parameters are fp32 in the model whatever the activation dtype.
    weight_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def leaf(values: torch.Tensor, leaf_dtype: torch.dtype = dtype) -> torch.Tensor:
        return values.to(device=device, dtype=leaf_dtype).requires_grad_()

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    return {
        "u": leaf(randn(batch, d_inner, seqlen)),
        "delta": leaf(0.5 * rand(batch, d_inner, seqlen)),
        "A": leaf(-0.5 * rand(d_inner, d_state), weight_dtype),
        "B": leaf(randn(batch, d_state, seqlen)),
        "C": leaf(randn(batch, d_state, seqlen)),
        "D": leaf(randn(d_inner), weight_dtype) if has_D else None,
        "z": leaf(randn(batch, d_inner, seqlen)) if has_z else None,
        "delta_bias": leaf(0.5 * rand(d_inner), weight_dtype) if has_delta_bias else None,
        "initial_state": leaf(randn(batch, d_inner, d_state), weight_dtype) if has_initial_state else None,
    }


def clone_inputs(inputs: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """Fresh leaves with the same values, so two implementations get independent gradients."""
    return {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}


def detached(inputs: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """The same tensors without autograd."""
    return {k: (v.detach() if v is not None else None) for k, v in inputs.items()}


def run_scan(fn, inputs: dict[str, torch.Tensor | None], seed: int = 1, **kwargs):
    """Forward with return_last_state, backward a random cotangent on both outputs; returns (out, state, grads)."""
    out, last_state = fn(**inputs, return_last_state=True, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    g_out = torch.randn(out.shape, generator=generator).to(out)
    g_state = torch.randn(last_state.shape, generator=generator).to(last_state)
    ((out * g_out).sum() + (last_state * g_state).sum()).backward()
    grads = {k: v.grad for k, v in inputs.items() if v is not None}
    return out.detach(), last_state.detach(), grads


def assert_scan_parity(inputs, tolerance, chunk_size: int, delta_softplus: bool) -> None:
    """Reference vs sequential oracle on cloned inputs: output, final state and all gradients."""
    ref_inputs, seq_inputs = clone_inputs(inputs), clone_inputs(inputs)
    out, state, grads = run_scan(selective_scan_ref, ref_inputs, delta_softplus=delta_softplus, chunk_size=chunk_size)
    out_seq, state_seq, grads_seq = run_scan(selective_scan_sequential, seq_inputs, delta_softplus=delta_softplus)
    torch.testing.assert_close(out, out_seq, **tolerance)
    torch.testing.assert_close(state, state_seq, **tolerance)
    assert grads.keys() == grads_seq.keys() == {k for k, v in inputs.items() if v is not None}
    for name in grads:
        expected = grads_seq[name]
        atol = tolerance["atol"]
        if name in REDUCED_OVER_BATCH_AND_TIME:
            # These gradients sum B*T terms of both signs: fp32 accumulation error scales with the
            # largest entry, not with each entry, so the absolute tolerance does too.
            atol = atol * max(1.0, expected.abs().max().item())
        torch.testing.assert_close(grads[name], expected, rtol=tolerance["rtol"], atol=atol, msg=lambda m, n=name: f"grad of {n}: {m}")


# ---- reference vs sequential oracle -------------------------------------------------------------


@pytest.mark.parametrize("has_initial_state", [False, True])
@pytest.mark.parametrize("delta_softplus", [False, True])
@pytest.mark.parametrize("has_delta_bias", [False, True])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("has_D", [False, True])
def test_ref_matches_sequential_optional_inputs(has_D, has_z, has_delta_bias, delta_softplus, has_initial_state):
    # T = 37 over chunks of 16: two full chunks and a partial one, so the carry is exercised.
    inputs = make_scan_inputs(seqlen=37, has_D=has_D, has_z=has_z, has_delta_bias=has_delta_bias, has_initial_state=has_initial_state)
    assert_scan_parity(inputs, TOLERANCES[torch.float32], chunk_size=16, delta_softplus=delta_softplus)


@pytest.mark.parametrize(
    ("seqlen", "chunk_size"),
    [
        (1, 64),  # a single step
        (37, 64),  # T < chunk_size
        (64, 64),  # exactly one chunk
        (100, 64),  # T not a multiple of chunk_size
        (100, 16),  # many chunks
        (9, 1),  # chunk_size 1: the carry does all the work
    ],
)
def test_ref_matches_sequential_lengths(seqlen, chunk_size):
    inputs = make_scan_inputs(seqlen=seqlen)
    assert_scan_parity(inputs, TOLERANCES[torch.float32], chunk_size=chunk_size, delta_softplus=True)


def test_ref_matches_sequential_float64():
    inputs = make_scan_inputs(seqlen=70, dtype=torch.float64)
    out = selective_scan_ref(**detached(inputs), delta_softplus=True)
    assert out.dtype == torch.float64
    assert_scan_parity(inputs, TOLERANCES[torch.float64], chunk_size=32, delta_softplus=True)


def test_ref_handles_strong_decay():
    # Steps up to ~20 with A = -(1..N) (Mamba's init) give in-chunk log-decays of about -5000:
    # nothing may overflow or turn into NaN, in the outputs or the gradients.
    inputs = make_scan_inputs(seqlen=80)
    with torch.no_grad():
        inputs["delta"].mul_(40.0)
        inputs["A"].copy_(-torch.arange(1, 5, dtype=torch.float32).repeat(6, 1))
    out, state, grads = run_scan(selective_scan_ref, clone_inputs(inputs), delta_softplus=True)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert_scan_parity(inputs, TOLERANCES[torch.float32], chunk_size=64, delta_softplus=True)


def test_ref_keeps_input_dtype_and_fp32_state():
    activations = ("u", "delta", "B", "C", "z")
    inputs = {k: v.detach().to(torch.bfloat16 if k in activations else v.dtype) for k, v in make_scan_inputs().items()}
    out, state = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32


def test_scan_continues_from_state():
    inputs = detached(make_scan_inputs(seqlen=50))
    full, full_state = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True, chunk_size=16)
    split = 23
    per_step = ("u", "delta", "B", "C", "z")
    first = {k: (v[..., :split] if k in per_step else v) for k, v in inputs.items()}
    second = {k: (v[..., split:] if k in per_step else v) for k, v in inputs.items()}
    out1, state1 = selective_scan_ref(**first, delta_softplus=True, return_last_state=True, chunk_size=16)
    second["initial_state"] = state1
    out2, state2 = selective_scan_ref(**second, delta_softplus=True, return_last_state=True, chunk_size=16)
    torch.testing.assert_close(torch.cat([out1, out2], dim=-1), full, **TOLERANCES[torch.float32])
    torch.testing.assert_close(state2, full_state, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("has_initial_state", [False, True])
def test_state_update_loop_matches_scan(has_initial_state):
    inputs = detached(make_scan_inputs(seqlen=21, has_initial_state=has_initial_state))
    out, last_state = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True, chunk_size=8)
    state = inputs["initial_state"].clone() if has_initial_state else torch.zeros_like(last_state)
    address = state.data_ptr()
    steps = []
    for t in range(out.shape[-1]):
        steps.append(
            selective_state_update(
                state,
                inputs["u"][..., t],
                inputs["delta"][..., t],
                inputs["A"],
                inputs["B"][..., t],
                inputs["C"][..., t],
                D=inputs["D"],
                z=inputs["z"][..., t],
                dt_bias=inputs["delta_bias"],
                dt_softplus=True,
            )
        )
    assert state.data_ptr() == address, "the state must be updated in place"
    torch.testing.assert_close(torch.stack(steps, dim=-1), out, **TOLERANCES[torch.float32])
    torch.testing.assert_close(state, last_state, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("has_z", [False, True])
def test_initial_state_correction_matches_reference(has_z):
    # The kernel path scans from zero and adds h_0's contribution afterwards; check that algebra on CPU.
    inputs = detached(make_scan_inputs(seqlen=45, has_z=has_z))
    expected, expected_state = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    from_zero = dict(inputs, initial_state=None)
    out, state = selective_scan_ref(**from_zero, delta_softplus=True, return_last_state=True)
    delta = scan_module._prepare_delta(inputs["delta"], inputs["delta_bias"], True)
    out, state = scan_module._add_initial_state_contribution(
        out, state, inputs["initial_state"], delta, inputs["A"], inputs["C"], inputs["z"]
    )
    torch.testing.assert_close(out, expected, **TOLERANCES[torch.float32])
    torch.testing.assert_close(state, expected_state, **TOLERANCES[torch.float32])


def scan_by_hand(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """The recurrence written out in float64, independently of the module's helpers:
    dt_t = softplus(delta_t + bias); h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t; y_t = <C_t, h_t> + D u_t,
    times silu(z_t)."""
    u, delta, A, B, C = (t.detach().double() for t in (u, delta, A, B, C))
    dt = delta + (delta_bias.detach().double()[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = torch.log1p(torch.exp(dt))
    batch, d_inner, seqlen = u.shape
    h = initial_state.detach().double().clone() if initial_state is not None else torch.zeros(batch, d_inner, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(seqlen):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        y = (h * C[:, None, :, t]).sum(-1)
        if D is not None:
            y = y + D.detach().double() * u[:, :, t]
        if z is not None:
            gate = z[:, :, t].detach().double()
            y = y * gate * torch.sigmoid(gate)
        ys.append(y)
    return torch.stack(ys, dim=2), h


@pytest.mark.parametrize("delta_softplus", [False, True])
def test_scans_equal_the_recurrence_written_out_in_float64(delta_softplus):
    """fp64 inputs are computed in fp64 (to 1e-12), by the chunked reference, the sequential
    oracle, the dispatcher and the step function alike."""
    inputs = detached(make_scan_inputs(seqlen=19, dtype=torch.float64))
    expected, expected_state = scan_by_hand(**inputs, delta_softplus=delta_softplus)
    exact = dict(rtol=1e-12, atol=1e-12)
    for fn in (selective_scan_ref, selective_scan_sequential, selective_scan):
        out, state = fn(**inputs, delta_softplus=delta_softplus, return_last_state=True, chunk_size=8)
        assert out.dtype == state.dtype == torch.float64
        torch.testing.assert_close(out, expected, **exact)
        torch.testing.assert_close(state, expected_state, **exact)
    state = inputs["initial_state"].clone()
    steps = [
        selective_state_update(state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t], inputs["C"][..., t],
                               D=inputs["D"], z=inputs["z"][..., t], dt_bias=inputs["delta_bias"], dt_softplus=delta_softplus)
        for t in range(19)
    ]
    torch.testing.assert_close(torch.stack(steps, dim=-1), expected, **exact)
    torch.testing.assert_close(state, expected_state, **exact)


def test_scan_defaults_are_no_softplus_no_state_and_output_only():
    inputs = detached(make_scan_inputs(seqlen=9, dtype=torch.float64, has_initial_state=False))
    expected, _ = scan_by_hand(**inputs)
    for fn in (selective_scan_ref, selective_scan_sequential, selective_scan):
        torch.testing.assert_close(fn(**inputs), expected, rtol=1e-12, atol=1e-12)
    # One step from a zero state without D, z, bias or softplus: y = <C_0, dt_0 u_0 B_0>.
    u, delta, A, B, C = (inputs[k][..., 0] if k != "A" else inputs[k] for k in ("u", "delta", "A", "B", "C"))
    y = selective_state_update(torch.zeros(2, 6, 4, dtype=torch.float64), u, delta, A, B, C)
    torch.testing.assert_close(y, (delta * u) * (B * C).sum(-1)[:, None], rtol=1e-12, atol=1e-12)


def test_low_precision_scans_compute_in_fp32_and_round_once():
    """bf16 activations: the output is the fp32 computation rounded to bf16 once; the state is fp32."""
    activations = ("u", "delta", "B", "C", "z")
    low = {k: (v.to(torch.bfloat16) if k in activations and v is not None else v) for k, v in detached(make_scan_inputs(seqlen=21)).items()}
    high = {k: (v.float() if v is not None else None) for k, v in low.items()}
    for fn in (selective_scan_ref, selective_scan_sequential):
        out, state = fn(**low, delta_softplus=True, return_last_state=True, chunk_size=8)
        out32, state32 = fn(**high, delta_softplus=True, return_last_state=True, chunk_size=8)
        assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
        assert torch.equal(out, out32.to(torch.bfloat16)) and torch.equal(state, state32)
    state, state32 = low["initial_state"].clone(), high["initial_state"].clone()
    for t in range(3):
        args = [low[k][..., t] if k != "A" else low[k] for k in ("u", "delta", "A", "B", "C")]
        args32 = [high[k][..., t] if k != "A" else high[k] for k in ("u", "delta", "A", "B", "C")]
        y = selective_state_update(state, *args, D=low["D"], z=low["z"][..., t], dt_bias=low["delta_bias"], dt_softplus=True)
        y32 = selective_state_update(state32, *args32, D=high["D"], z=high["z"][..., t], dt_bias=high["delta_bias"], dt_softplus=True)
        assert y.dtype == torch.bfloat16 and torch.equal(y, y32.to(torch.bfloat16)) and torch.equal(state, state32)


def test_initial_state_correction_keeps_dtypes_and_does_not_alias_the_state():
    """The kernel-path correction returns out in out's dtype and an fp32 state, and keeps no
    reference to the caller's state buffer (which the caller overwrites in place)."""
    inputs = detached(make_scan_inputs(seqlen=7))
    delta = scan_module._prepare_delta(inputs["delta"], inputs["delta_bias"], True)
    zero = selective_scan_ref(**dict(inputs, initial_state=None), delta_softplus=True, return_last_state=True)
    h0 = inputs["initial_state"].clone().requires_grad_()
    delta = delta.clone().requires_grad_()  # its gradient needs h0, so autograd keeps h0
    out, state = scan_module._add_initial_state_contribution(zero[0].to(torch.bfloat16), zero[1], h0, delta, inputs["A"], inputs["C"], inputs["z"])
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    with torch.no_grad():
        h0.zero_()  # the caller's buffer moves on
    out.float().sum().backward()  # raises if autograd saved the buffer itself
    assert h0.grad is not None and delta.grad is not None
    _, expected_state = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(state.detach(), expected_state, **TOLERANCES[torch.float32])


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(delta=torch.zeros(2, 6, 36)), "u and delta"),
        (dict(u=torch.zeros(2, 6, 37, 1), delta=torch.zeros(2, 6, 37, 1)), "u and delta"),
        (dict(A=torch.zeros(5, 4)), "A must be"),
        (dict(A=torch.zeros(6, 4, 1)), "A must be"),
        (dict(A=torch.zeros(6, 4, dtype=torch.complex64)), "complex"),
        (dict(C=torch.zeros(2, 4, 36)), "B and C"),
        (dict(B=torch.zeros(2, 3, 37)), "B and C"),
        (dict(initial_state=torch.zeros(2, 6, 5)), "initial_state"),
    ],
)
def test_scan_shape_errors_name_the_argument(bad, message):
    inputs = dict(detached(make_scan_inputs()), **bad)
    for fn in (selective_scan_ref, selective_scan_sequential, selective_scan):
        with pytest.raises(ValueError, match=message):
            fn(**inputs)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_ref(**detached(make_scan_inputs()), chunk_size=0)


# ---- causal conv1d ------------------------------------------------------------------------------


def make_conv_inputs(batch=2, d_inner=5, seqlen=13, width=4, has_bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_inner, seqlen, generator=generator)
    weight = torch.randn(d_inner, width, generator=generator)
    bias = torch.randn(d_inner, generator=generator) if has_bias else None
    return x, weight, bias


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_causal_conv1d_ref_matches_conv1d(width, has_bias, activation):
    x, weight, bias = make_conv_inputs(width=width, has_bias=has_bias)
    # mamba_ssm's non-kernel path: an nn.Conv1d padded by W-1 on both sides, truncated to T.
    conv = torch.nn.Conv1d(5, 5, width, groups=5, padding=width - 1, bias=has_bias)
    with torch.no_grad():
        conv.weight.copy_(weight[:, None, :])
        if has_bias:
            conv.bias.copy_(bias)
    expected = conv(x)[..., : x.shape[-1]]
    if activation == "silu":
        expected = F.silu(expected)
    torch.testing.assert_close(causal_conv1d_ref(x, weight, bias, activation=activation), expected)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation=activation), expected)


@pytest.mark.parametrize("width", [2, 4])
def test_causal_conv1d_continues_from_state(width):
    x, weight, bias = make_conv_inputs(seqlen=17, width=width)
    full = causal_conv1d_ref(x, weight, bias, activation="silu")
    split = 6
    state = causal_conv1d_final_state(x[..., :split], width)
    second = causal_conv1d_ref(x[..., split:], weight, bias, activation="silu", initial_state=state)
    torch.testing.assert_close(second, full[..., split:])
    # The state after both pieces equals the state after the whole sequence.
    final = causal_conv1d_final_state(x[..., split:], width, state)
    torch.testing.assert_close(final, causal_conv1d_final_state(x, width))


def test_causal_conv1d_final_state_left_pads_short_sequences():
    x, _, _ = make_conv_inputs(seqlen=2, width=4)
    state = causal_conv1d_final_state(x, 4)
    assert state.shape == (2, 5, 4)
    torch.testing.assert_close(state[..., :2], torch.zeros(2, 5, 2))
    torch.testing.assert_close(state[..., 2:], x)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
def test_causal_conv1d_update_loop_matches_parallel(has_bias, activation):
    x, weight, bias = make_conv_inputs(has_bias=has_bias)
    expected = causal_conv1d_ref(x, weight, bias, activation=activation)
    conv_state = torch.zeros(2, 5, 4)
    address = conv_state.data_ptr()
    steps = [causal_conv1d_update(x[..., t], conv_state, weight, bias, activation) for t in range(x.shape[-1])]
    assert conv_state.data_ptr() == address, "the conv state must be updated in place"
    torch.testing.assert_close(torch.stack(steps, dim=-1), expected)
    torch.testing.assert_close(conv_state, causal_conv1d_final_state(x, 4))


def test_causal_conv1d_ref_gradients_match_conv1d():
    x, weight, bias = make_conv_inputs()
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    causal_conv1d_ref(*leaves, activation="silu").square().sum().backward()
    direct = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = F.conv1d(direct[0], direct[1][:, None, :], direct[2], padding=3, groups=5)[..., : x.shape[-1]]
    F.silu(out).square().sum().backward()
    for mine, theirs in zip(leaves, direct):
        torch.testing.assert_close(mine.grad, theirs.grad)


# ---- dispatch -----------------------------------------------------------------------------------


def test_override_impl_is_honoured(monkeypatch):
    monkeypatch.setattr(scan_module, "HAS_MAMBA_KERNELS", False)
    inputs = detached(make_scan_inputs())
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    with scan_module.override_impl("ref"):
        # The override wins even over an explicit impl="kernel", which would raise here.
        out = selective_scan(**inputs, delta_softplus=True, impl="kernel")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert scan_module._dispatch.forced is None, "the override must be undone on exit"
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True), expected, rtol=0, atol=0)


def test_kernel_without_mamba_ssm_raises(monkeypatch):
    monkeypatch.setattr(scan_module, "HAS_MAMBA_KERNELS", False)
    inputs = detached(make_scan_inputs())
    with pytest.raises(ImportError, match="mamba_ssm"):
        selective_scan(**inputs, impl="kernel")
    step_inputs = [inputs[k][..., 0] if k != "A" else inputs[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ImportError, match="mamba_ssm"):
        selective_state_update(torch.zeros(2, 6, 4), *step_inputs, impl="kernel")
    with pytest.raises(ValueError, match="impl must be one of"):
        selective_scan(**inputs, impl="triton")


def test_conv_kernel_without_causal_conv1d_raises(monkeypatch):
    monkeypatch.setattr(conv_module, "HAS_CAUSAL_CONV1D_KERNELS", False)
    x, weight, bias = make_conv_inputs()
    with pytest.raises(ImportError, match="causal_conv1d"):
        causal_conv1d(x, weight, bias, impl="kernel")
    with pytest.raises(ImportError, match="causal_conv1d"):
        causal_conv1d_update(x[..., 0], torch.zeros(2, 5, 4), weight, bias, impl="kernel")
    with conv_module.override_impl("ref"):
        torch.testing.assert_close(causal_conv1d(x, weight, bias, impl="kernel"), causal_conv1d_ref(x, weight, bias))


def test_empty_sequences_give_empty_outputs_and_the_initial_state():
    inputs = detached(make_scan_inputs(seqlen=0))
    for fn in (selective_scan_ref, selective_scan_sequential, selective_scan):
        out, state = fn(**inputs, delta_softplus=True, return_last_state=True)
        assert out.shape == (2, 6, 0) and torch.equal(state, inputs["initial_state"])
        out, state = fn(**dict(inputs, initial_state=None), return_last_state=True)
        assert out.shape == (2, 6, 0) and torch.equal(state, torch.zeros(2, 6, 4))


def test_state_update_checks_the_state_and_keeps_autograd_intact():
    """A wrong state shape raises; stepping with autograd on, the state buffer is overwritten in
    place each step, and the backward pass still works (the step keeps its own copy)."""
    inputs = detached(make_scan_inputs(seqlen=3))
    step = [inputs[k][..., 0] if k != "A" else inputs[k] for k in ("u", "delta", "A", "B", "C")]
    for bad in (torch.zeros(3, 6, 4), torch.zeros(2, 6, 5), torch.zeros(2, 6)):
        with pytest.raises(ValueError, match=r"state must be \[B, Din, N\]"):
            selective_state_update(bad, *step)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in ("u", "delta", "B", "C")}
    state = torch.zeros(2, 6, 4)
    ys = []
    for t in range(3):
        args = [leaves[k][..., t] if k in leaves else inputs[k] for k in ("u", "delta", "A", "B", "C")]
        ys.append(selective_state_update(state, *args, D=inputs["D"], dt_softplus=True))
    torch.stack(ys).sum().backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in leaves.values())


def test_conv_reference_checks_its_state_and_rounds_steps_to_the_state_dtype():
    x, weight, bias = make_conv_inputs()
    with pytest.raises(ValueError, match=r"^initial_state must be \[B, Din, W\]"):
        causal_conv1d_ref(x, weight, bias, initial_state=torch.zeros(2, 5, 3))
    # An fp32 input stepped into a bf16 conv state is stored (and used) rounded to bf16.
    state, rounded = torch.zeros(2, 5, 4, dtype=torch.bfloat16), torch.zeros(2, 5, 4, dtype=torch.bfloat16)
    out = causal_conv1d_update(x[..., 0], state, weight, bias)
    expected = causal_conv1d_update(x[..., 0].to(torch.bfloat16).float(), rounded.float(), weight, bias)
    assert torch.equal(out, expected) and torch.equal(state.float(), torch.cat([rounded.float()[..., 1:], x[..., :1].to(torch.bfloat16).float()], dim=2))


def test_kernel_dispatch_decisions_and_log_levels(caplog):
    """What each impl resolves to, and how it is logged (on a GPU, falling back is a warning)."""
    from streammind.ops.dispatch import KernelDispatch

    # A logger of its own for each run: messages are logged once per process, keyed by logger and text.
    name = f"tests.ops.dispatch_decisions.{uuid.uuid4().hex}"
    dispatch = KernelDispatch("fastpkg", name)
    assert dispatch.forced is None
    missing = (ImportError, "fastpkg is missing")
    caplog.set_level(logging.INFO, logger=name)
    assert dispatch.use_kernel("op_a", "ref", None, on_cuda=True) is False
    assert dispatch.use_kernel("op_b", "kernel", None, on_cuda=True) is True
    assert dispatch.use_kernel("op_c", "auto", None, on_cuda=True) is True
    assert dispatch.use_kernel("op_d", "auto", missing, on_cuda=True) is False
    assert dispatch.use_kernel("op_e", "auto", missing, on_cuda=False) is False
    with pytest.raises(ImportError, match=r"op_f\(impl='kernel'\) cannot run: fastpkg is missing"):
        dispatch.use_kernel("op_f", "kernel", missing, on_cuda=True)
    with dispatch.override_impl("ref"):
        assert dispatch.forced == "ref" and dispatch.use_kernel("op_g", "kernel", None, on_cuda=True) is False
    assert dispatch.forced is None
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.use_kernel("op_h", "fast", None, on_cuda=True)
    with pytest.raises(ValueError, match="impl must be one of"), dispatch.override_impl("fast"):
        pass
    logged = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert logged == [
        (name, logging.INFO, "op_a: using the PyTorch reference path (requested)"),
        (name, logging.INFO, "op_b: using the fastpkg kernel (requested)"),
        (name, logging.INFO, "op_c: using the fastpkg kernel"),
        (name, logging.WARNING, "op_d: using the PyTorch reference path because fastpkg is missing"),
        (name, logging.INFO, "op_e: using the PyTorch reference path because fastpkg is missing"),
        (name, logging.INFO, "op_g: using the PyTorch reference path (requested)"),
    ]


def _fake_kernel(*args, **kwargs):
    raise AssertionError("the kernel must not run on CPU tensors")


def test_kernels_refuse_cpu_tensors_and_auto_falls_back(monkeypatch, caplog):
    """With the kernel packages importable, CPU tensors still go to the reference ("auto") or
    raise naming the op and the reason ("kernel")."""
    monkeypatch.setattr(scan_module, "HAS_MAMBA_KERNELS", True)
    monkeypatch.setattr(scan_module, "_kernel_selective_scan", _fake_kernel)
    monkeypatch.setattr(scan_module, "_kernel_selective_state_update", _fake_kernel)
    monkeypatch.setattr(conv_module, "HAS_CAUSAL_CONV1D_KERNELS", True)
    monkeypatch.setattr(conv_module, "_kernel_causal_conv1d", _fake_kernel)
    monkeypatch.setattr(conv_module, "_kernel_causal_conv1d_update", _fake_kernel)
    inputs = detached(make_scan_inputs())
    step = [inputs[k][..., 0] if k != "A" else inputs[k] for k in ("u", "delta", "A", "B", "C")]
    x, weight, bias = make_conv_inputs()
    calls = [
        ("selective_scan", lambda impl: selective_scan(**inputs, impl=impl)),
        ("selective_state_update", lambda impl: selective_state_update(torch.zeros(2, 6, 4), *step, impl=impl)),
        ("causal_conv1d", lambda impl: causal_conv1d(x, weight, bias, impl=impl)),
        ("causal_conv1d_update", lambda impl: causal_conv1d_update(x[..., 0], torch.zeros(2, 5, 4), weight, bias, impl=impl)),
    ]
    for op, call in calls:
        with pytest.raises(ValueError, match=rf"^{op}\(impl='kernel'\) cannot run: the tensors are not on CUDA$"):
            call("kernel")
        call("auto")  # the reference: the fake kernel would raise
    with pytest.raises(ImportError, match="mamba_ssm.ops.selective_scan_interface is not importable"):
        monkeypatch.setattr(scan_module, "_kernel_selective_scan", None)
        selective_scan(**inputs, impl="kernel")
    with pytest.raises(ImportError, match="mamba_ssm.ops.triton.selective_state_update is not importable"):
        monkeypatch.setattr(scan_module, "_kernel_selective_state_update", None)
        selective_state_update(torch.zeros(2, 6, 4), *step, impl="kernel")
    with pytest.raises(ImportError, match="the causal_conv1d package is not importable"):
        monkeypatch.setattr(conv_module, "_kernel_causal_conv1d", None)
        causal_conv1d(x, weight, bias, impl="kernel")


def conv_by_hand(x, weight, bias=None, activation=None, initial_state=None):
    """out_t = sum_k w_k x_{t-W+1+k} (+ bias), zeros (or the state's newest W-1) before the start; float64."""
    x, weight = x.double(), weight.double()
    width = weight.shape[1]
    before = initial_state[:, :, 1:].double() if initial_state is not None else torch.zeros(x.shape[0], x.shape[1], width - 1, dtype=torch.float64)
    padded = torch.cat([before, x], dim=2)
    out = sum(weight[None, :, k, None] * padded[:, :, k : k + x.shape[2]] for k in range(width))
    if bias is not None:
        out = out + bias.double()[None, :, None]
    return out * torch.sigmoid(out) if activation == "silu" else out


@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv_written_out_in_float64(with_state):
    x, weight, bias = (t.double() for t in make_conv_inputs(seqlen=9, width=3))
    state = torch.randn(2, 5, 3, dtype=torch.float64) if with_state else None
    expected = conv_by_hand(x, weight, bias, "silu", state)
    exact = dict(rtol=1e-12, atol=1e-12)
    for impl in ("auto", "ref"):
        out = causal_conv1d(x, weight, bias, activation="silu", initial_state=state, impl=impl)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, **exact)
    conv_state = state.clone() if with_state else torch.zeros(2, 5, 3, dtype=torch.float64)
    steps = [causal_conv1d_update(x[..., t], conv_state, weight, bias, "silu") for t in range(9)]
    torch.testing.assert_close(torch.stack(steps, dim=-1), expected, **exact)
    torch.testing.assert_close(causal_conv1d(x, weight), conv_by_hand(x, weight), **exact)  # no bias, no activation by default


def test_low_precision_convs_compute_in_fp32_and_round_once():
    x, weight, bias = make_conv_inputs(seqlen=9)
    x16 = x.to(torch.bfloat16)
    state16 = torch.randn(2, 5, 4).to(torch.bfloat16)
    out = causal_conv1d_ref(x16, weight, bias, activation="silu", initial_state=state16)
    out32 = causal_conv1d_ref(x16.float(), weight, bias, activation="silu", initial_state=state16.float())
    assert out.dtype == torch.bfloat16 and torch.equal(out, out32.to(torch.bfloat16))
    conv16, conv32 = state16.clone(), state16.float()
    for t in range(3):
        y = causal_conv1d_update(x16[..., t], conv16, weight, bias, "silu")
        y32 = causal_conv1d_update(x16[..., t].float(), conv32, weight, bias, "silu")
        assert y.dtype == torch.bfloat16 and torch.equal(y, y32.to(torch.bfloat16))
        assert conv16.dtype == torch.bfloat16 and torch.equal(conv16.float(), conv32)
    final = causal_conv1d_final_state(x16, 4, state16.float())
    assert final.dtype == torch.bfloat16 and torch.equal(final, torch.cat([state16, x16], dim=2)[..., -4:])


def test_conv_argument_errors():
    x, weight, bias = make_conv_inputs()
    for call in (
        lambda: causal_conv1d(x, weight, bias, activation="relu"),
        lambda: causal_conv1d_ref(x, weight, bias, activation="relu"),
        lambda: causal_conv1d_update(x[..., 0], torch.zeros(2, 5, 4), weight, bias, activation="relu"),
    ):
        with pytest.raises(ValueError, match="activation must be None or 'silu', got 'relu'"):
            call()
    with pytest.raises(ValueError, match=r"initial_state must be \[B, Din, W\] = \(2, 5, 4\); got \(2, 5, 3\)"):
        causal_conv1d(x, weight, bias, initial_state=torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"conv_state must be \[B, Din, W\] = \(2, 5, 4\); got \(1, 5, 4\)"):
        causal_conv1d_update(x[..., 0], torch.zeros(1, 5, 4), weight, bias)


# ---- kernels vs reference (GPU) -----------------------------------------------------------------


def report_diff(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Print max and mean |diff| (visible with -s), as mamba_ssm's tests do."""
    diff = (actual.float() - expected.float()).abs()
    print(f"{name}: max diff {diff.max().item():.3e}, mean diff {diff.mean().item():.3e}")  # noqa: T201 (reported as mamba_ssm does)


@pytest.mark.kernels
@needs_mamba_kernels
@pytest.mark.parametrize("has_initial_state", [False, True])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_kernel_matches_ref(dtype, has_z, has_initial_state):
    inputs = make_scan_inputs(
        batch=2,
        d_inner=64,
        d_state=16,
        seqlen=300,
        has_z=has_z,
        has_initial_state=has_initial_state,
        dtype=dtype,
        device="cuda",
    )
    tolerance = KERNEL_TOLERANCES[dtype]
    kernel_inputs, ref_inputs = clone_inputs(inputs), clone_inputs(inputs)
    out, state, grads = run_scan(selective_scan, kernel_inputs, delta_softplus=True, impl="kernel")
    out_ref, state_ref, grads_ref = run_scan(selective_scan_ref, ref_inputs, delta_softplus=True)
    report_diff("out", out, out_ref)
    report_diff("last_state", state, state_ref)
    torch.testing.assert_close(out, out_ref, **tolerance)
    torch.testing.assert_close(state, state_ref, **tolerance)
    for name in grads_ref:
        report_diff(f"grad {name}", grads[name], grads_ref[name])
        torch.testing.assert_close(grads[name], grads_ref[name], **tolerance)


@pytest.mark.kernels
@needs_mamba_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_state_update_kernel_matches_ref(dtype):
    inputs = detached(make_scan_inputs(d_inner=64, d_state=16, seqlen=1, dtype=dtype, device="cuda"))
    state = inputs["initial_state"].float().contiguous()
    state_ref = state.clone()
    args = [inputs[k][..., 0] if k in ("u", "delta", "B", "C") else inputs[k] for k in ("u", "delta", "A", "B", "C")]
    kwargs = dict(D=inputs["D"], z=inputs["z"][..., 0], dt_bias=inputs["delta_bias"], dt_softplus=True)
    y = selective_state_update(state, *args, **kwargs, impl="kernel")
    y_ref = selective_state_update(state_ref, *args, **kwargs, impl="ref")
    report_diff("y", y, y_ref)
    report_diff("state", state, state_ref)
    torch.testing.assert_close(y, y_ref, **KERNEL_TOLERANCES[dtype])
    torch.testing.assert_close(state, state_ref, **KERNEL_TOLERANCES[dtype])


@pytest.mark.kernels
@needs_conv_kernels
@pytest.mark.parametrize("has_initial_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_kernel_matches_ref(dtype, has_initial_state):
    x, weight, bias = (t.to("cuda", dtype) for t in make_conv_inputs(d_inner=64, seqlen=300))
    state = torch.randn(2, 64, 4, device="cuda", dtype=dtype) if has_initial_state else None
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    leaves_ref = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = causal_conv1d(*leaves, activation="silu", initial_state=state, impl="kernel")
    out_ref = causal_conv1d_ref(*leaves_ref, activation="silu", initial_state=state)
    g = torch.randn_like(out_ref)
    (out * g).sum().backward()
    (out_ref * g).sum().backward()
    tolerance = KERNEL_TOLERANCES[dtype]
    report_diff("out", out, out_ref)
    torch.testing.assert_close(out, out_ref, **tolerance)
    for name, mine, theirs in zip(("x", "weight", "bias"), leaves, leaves_ref):
        report_diff(f"grad {name}", mine.grad, theirs.grad)
        torch.testing.assert_close(mine.grad, theirs.grad, **tolerance)


@pytest.mark.kernels
@needs_conv_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_update_kernel_matches_ref(dtype):
    x, weight, bias = (t.to("cuda", dtype) for t in make_conv_inputs(d_inner=64, seqlen=1))
    conv_state = torch.randn(2, 64, 4, device="cuda", dtype=dtype)
    conv_state_ref = conv_state.clone()
    out = causal_conv1d_update(x[..., 0], conv_state, weight, bias, "silu", impl="kernel")
    out_ref = causal_conv1d_update(x[..., 0], conv_state_ref, weight, bias, "silu", impl="ref")
    report_diff("out", out, out_ref)
    torch.testing.assert_close(out, out_ref, **KERNEL_TOLERANCES[dtype])
    torch.testing.assert_close(conv_state, conv_state_ref, rtol=0, atol=0)
