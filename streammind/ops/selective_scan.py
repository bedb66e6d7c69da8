"""Selective scan (the Mamba-1 S6 recurrence): PyTorch reference, sequential oracle, kernel dispatch.

The recurrence, per batch element b, channel d and state index n (diagonal A, zero-order-hold
style discretisation of A and Euler discretisation of B, as in Mamba-1):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t
    y_t = y_t * silu(z_t)                          (only when z is given)

Notation used for tensor shapes:
    B    batch
    Din  channels (Mamba's d_inner)
    T    time steps (frames)
    N    state size per channel (Mamba's d_state)

Functions:
    selective_scan_ref         chunked scan in plain PyTorch; the runtime path on CPU and on GPUs
                               without compiled kernels. Differentiable by autograd.
    selective_scan_sequential  the per-step loop; the test oracle, too slow for runtime use.
    selective_state_update     one recurrent step, state updated in place (streaming).
    selective_scan             the single dispatch point: mamba_ssm's CUDA kernel or the reference.
    override_impl              context manager forcing one path (tests).

Notable choices:
    - The reference paths compute in fp32 whatever the input dtype (fp64 for fp64 inputs, so tests
      can check the algebra exactly); outputs are cast back to u's dtype and final states stay in
      the compute dtype, because the state accumulates over thousands of frames.
    - The chunked reference splits T into chunks of `chunk_size` steps. Inside a chunk, the
      zero-start states come from a Hillis-Steele (log-depth) scan over time whose window decays
      are products of the per-step factors exp(delta_t * A), built by repeated squaring: no
      differences of large log-decays, so no fp32 cancellation. The state carried in from the
      previous chunk enters as exp(S_t) * h_in, with S_t the in-chunk cumulative sum of
      delta * A (log space). Every factor lies in (0, 1] when delta * A <= 0, which always holds
      in Mamba (A = -exp(A_log), delta = softplus(.)). Only one chunk's intermediates are alive
      at a time without autograd; with autograd memory grows like T * log2(chunk_size).
    - mamba_ssm's `selective_scan_fn` has no initial-state argument. The kernel path adds the
      initial state's contribution afterwards, which is exact because the recurrence is linear
      in h: h_t += exp(S_t) * h_0 with S_t the cumulative sum of delta*A from the start.
    - Only real A is supported (mamba_ssm also supports complex A; Mamba-1 models use real A).

References:
    Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023), §3.2
    and Algorithm 2; mamba_ssm `ops/selective_scan_interface.py` (argument conventions and the
    u: r(B D L) shape notation), `ops/triton/selective_state_update.py` (step semantics).
    Hillis & Steele, "Data parallel algorithms" (1986), for the in-chunk scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Impl, KernelDispatch

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _kernel_selective_scan
except ImportError:
    _kernel_selective_scan = None

try:
    from mamba_ssm.ops.triton.selective_state_update import (
        selective_state_update as _kernel_selective_state_update,
    )
except ImportError:
    _kernel_selective_state_update = None

HAS_MAMBA_KERNELS = _kernel_selective_scan is not None

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INSTALL_HINT = "install it with `pip install mamba-ssm` (or `pip install 'streammind[kernels]'`)"


_dispatch = KernelDispatch("mamba_ssm", __name__)
override_impl = _dispatch.override_impl
_use_kernel = _dispatch.use_kernel


def _kernel_unavailable(kernel: object, module_path: str, tensors: list[torch.Tensor | None]) -> tuple[type[Exception], str] | None:
    """Why the kernel cannot take `tensors` (the first is the input), as (exception type, reason), or None."""
    if kernel is None:
        return ImportError, f"{module_path} is not importable; {_INSTALL_HINT}"
    if not all(t.is_cuda for t in tensors if t is not None):
        return ValueError, "the tensors are not on CUDA"
    # pragma: no mutate block (reached only with CUDA tensors; the GPU tests in tests/ops cover it)
    if tensors[0].dtype not in _KERNEL_DTYPES:
        return ValueError, f"dtype {tensors[0].dtype} is not supported by the kernel (float32, float16, bfloat16)"
    return None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The reference paths compute in fp32, or in fp64 when given fp64 inputs (exact tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare_delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """delta in `dtype` with the bias added ([Din] broadcast over [B, Din, T]) and softplus applied."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Skip connection and SiLU gate on the scan output y [B, Din, T], in y's (compute) dtype."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _check_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise a ValueError naming the offending argument when the scan shapes do not agree."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be [B, Din, T]; got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, d_inner, seqlen = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be [Din={d_inner}, N]; got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    expected_bc = (batch, A.shape[1], seqlen)
    if tuple(B.shape) != expected_bc or tuple(C.shape) != expected_bc:
        raise ValueError(f"B and C must be [B, N, T] = {expected_bc}; got {tuple(B.shape)} and {tuple(C.shape)}")
    expected_state = (batch, d_inner, A.shape[1])
    if initial_state is not None and tuple(initial_state.shape) != expected_state:
        raise ValueError(f"initial_state must be [B, Din, N] = {expected_state}; got {tuple(initial_state.shape)}")


def _scan_within_chunk(decay: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """States of h_t = a_t * h_{t-1} + x_t over one chunk from h = 0 (time on dim 2).

    decay: [B, Din, L, N] per-step factors a_t = exp(delta_t * A).
    x: [B, Din, L, N] per-step inputs delta_t * B_t * u_t.
    Returns h: [B, Din, L, N]. Hillis-Steele: before the pass with offset k, x[t] holds the
    contribution of steps (t-k, t] and decay[t] their product a_t * ... * a_{t-k+1}; the pass
    adds decay[t] * x[t-k], and the window products double by repeated squaring.
    """
    length = x.shape[2]
    k = 1
    while k < length:
        # [B, Din, L-k, N]: x[t] + (a_t ... a_{t-k+1}) * x[t-k]; the first k positions are complete.
        x = torch.cat([x[:, :, :k], torch.addcmul(x[:, :, k:], decay[:, :, k:], x[:, :, :-k])], dim=2)
        if 2 * k < length:
            decay = torch.cat([decay[:, :, :k], decay[:, :, k:] * decay[:, :, :-k]], dim=2)
        k *= 2
    return x


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan in plain PyTorch (fp32 compute, fp64 for fp64 inputs; differentiable).

    Args:
        u: [B, Din, T] input sequence.
        delta: [B, Din, T] step sizes before `delta_bias` and softplus.
        A: [Din, N] real state matrix (diagonal per channel; Mamba uses A = -exp(A_log) < 0).
        B: [B, N, T] input matrix, per time step.
        C: [B, N, T] output matrix, per time step.
        D: [Din] skip connection, or None.
        z: [B, Din, T] gate; the output is multiplied by silu(z). None for no gate.
        delta_bias: [Din] added to delta before softplus, or None.
        delta_softplus: apply softplus to delta (after the bias).
        initial_state: [B, Din, N] state before the first step (any float dtype), or None for zeros.
        return_last_state: also return the state after the last step.
        chunk_size: time steps per chunk. Without autograd the working set is a few
            [B, Din, chunk_size, N] tensors; autograd keeps about 2 * log2(chunk_size) + 6 of
            them per chunk.

    Returns:
        out: [B, Din, T] in u's dtype; and, with return_last_state, last_state: [B, Din, N] fp32
        (fp64 for fp64 inputs).
    """
    _check_shapes(u, delta, A, B, C, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype_in = u.dtype
    batch, d_inner, seqlen = u.shape
    cdt = _compute_dtype(u)
    u_f = u.to(cdt)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, cdt)
    A = A.to(cdt)
    B = B.to(cdt)
    C = C.to(cdt)
    if initial_state is None:
        h = u_f.new_zeros(batch, d_inner, A.shape[1])
    else:
        # Copy: callers update their state buffer in place after this call, and autograd saves h.
        h = initial_state.to(cdt, copy=True)

    ys = []
    for start in range(0, seqlen, chunk_size):
        stop = min(start + chunk_size, seqlen)
        delta_c = delta[:, :, start:stop]  # [B, Din, L]
        delta_A = delta_c[..., None] * A[:, None, :]  # [B, Din, L, N], log of the per-step decay
        B_c = B[:, None, :, start:stop].transpose(2, 3)  # [B, 1, L, N]
        x = (delta_c * u_f[:, :, start:stop])[..., None] * B_c  # [B, Din, L, N], delta_t * B_t * u_t
        # States from a zero start, plus the carried state decayed by exp(S_t) from the chunk start to t.
        carry_decay = torch.exp(torch.cumsum(delta_A, dim=2))  # [B, Din, L, N]
        states = torch.addcmul(_scan_within_chunk(torch.exp(delta_A), x), carry_decay, h[:, :, None, :])
        ys.append(torch.einsum("bdln,bnl->bdl", states, C[:, :, start:stop]))  # [B, Din, L]
        h = states[:, :, -1]  # [B, Din, N], carried to the next chunk
    y = torch.cat(ys, dim=2) if ys else u_f.new_zeros(batch, d_inner, 0)  # [B, Din, T]
    out = _finish_output(y, u_f, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The plain per-step recurrence: THE TEST ORACLE for every other scan implementation.

    Same arguments and returns as `selective_scan_ref` (`chunk_size` is accepted for signature
    parity and ignored). One Python iteration per time step, so use it only in tests.
    """
    _check_shapes(u, delta, A, B, C, initial_state)
    dtype_in = u.dtype
    batch, d_inner, seqlen = u.shape
    cdt = _compute_dtype(u)
    u_f = u.to(cdt)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, cdt)
    A = A.to(cdt)
    B = B.to(cdt)
    C = C.to(cdt)
    if initial_state is None:
        h = u_f.new_zeros(batch, d_inner, A.shape[1])
    else:
        h = initial_state.to(cdt, copy=True)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(delta[:, :, t, None] * A)  # [B, Din, N]
        h = decay * h + (delta[:, :, t] * u_f[:, :, t])[..., None] * B[:, None, :, t]  # [B, Din, N]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))  # [B, Din]
    y = torch.stack(ys, dim=2) if ys else u_f.new_zeros(batch, d_inner, 0)  # [B, Din, T]
    out = _finish_output(y, u_f, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


def _add_initial_state_contribution(
    out: torch.Tensor,
    last_state: torch.Tensor,
    initial_state: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    z: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add h_0's effect to a zero-initial-state scan result (exact: the recurrence is linear in h).

    out: [B, Din, T] scan output computed from h_0 = 0; last_state: [B, Din, N] likewise.
    initial_state: [B, Din, N]; delta: [B, Din, T] fp32 after bias and softplus; A: [Din, N];
    C: [B, N, T]; z: [B, Din, T] or None. Returns (out in out's dtype, last_state fp32).
    """
    decay = torch.exp(torch.cumsum(delta[..., None] * A.float()[:, None, :], dim=2))  # [B, Din, T, N]
    h0 = initial_state.to(torch.float32, copy=True)  # copied for the same reason as in the reference
    extra = torch.einsum("bdtn,bdn,bnt->bdt", decay, h0, C.float())  # [B, Din, T]
    if z is not None:
        extra = extra * F.silu(z.float())
    out = (out.float() + extra).to(out.dtype)
    last_state = last_state.float() + decay[:, :, -1] * h0
    return out, last_state


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
    impl: Impl = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan through mamba_ssm's CUDA kernel or the PyTorch reference (one dispatch point).

    Arguments and returns as `selective_scan_ref`. `impl`:
        "auto"   the kernel when mamba_ssm imports, the tensors are on CUDA and u's dtype is
                 float32/float16/bfloat16; otherwise the reference. The choice is logged once.
        "ref"    always the reference.
        "kernel" always the kernel; raises ImportError (naming mamba_ssm) when it is missing and
                 ValueError when the tensors are not on CUDA or have an unsupported dtype.
    An active `override_impl(...)` block replaces `impl`. `chunk_size` only affects the reference.
    """
    unavailable = _kernel_unavailable(
        _kernel_selective_scan if HAS_MAMBA_KERNELS else None,
        "mamba_ssm.ops.selective_scan_interface",
        [u, delta, A, B, C, D, z, delta_bias, initial_state],
    )
    if not _use_kernel("selective_scan", impl, unavailable, u.is_cuda):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state, chunk_size)
    # pragma: no mutate block (the kernel path needs CUDA and mamba_ssm; the GPU tests in tests/ops cover it)
    _check_shapes(u, delta, A, B, C, initial_state)
    # The kernel checks dtypes: delta, z and the time-varying B, C in u's dtype; A, D, delta_bias fp32.
    z_k = z.to(u.dtype) if z is not None else None
    D_k = D.float() if D is not None else None
    bias_k = delta_bias.float() if delta_bias is not None else None
    need_state = return_last_state or initial_state is not None
    result = _kernel_selective_scan(
        u,
        delta.to(u.dtype),
        A.float(),
        B.to(u.dtype),
        C.to(u.dtype),
        D_k,
        z_k,
        bias_k,
        delta_softplus,
        return_last_state=need_state,
    )
    if not need_state:
        return result
    out, last_state = result
    if initial_state is not None:
        out, last_state = _add_initial_state_contribution(
            out, last_state, initial_state, _prepare_delta(delta, delta_bias, delta_softplus), A, C, z
        )
    return (out, last_state.float()) if return_last_state else out


def _selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> torch.Tensor:
    """One recurrence step in the compute dtype; writes the new state into `state`, returns y [B, Din]."""
    cdt = _compute_dtype(x)
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    x_f = x.to(cdt)
    decay = torch.exp(dt[..., None] * A.to(cdt))  # [B, Din, N]
    # Copy: `state` is overwritten below, and autograd would otherwise save the buffer itself.
    previous = state.to(cdt, copy=True)  # [B, Din, N]
    new_state = decay * previous + (dt * x_f)[..., None] * B.to(cdt)[:, None, :]  # [B, Din, N]
    y = torch.einsum("bdn,bn->bd", new_state, C.to(cdt))  # [B, Din]; from the unrounded state, as the scan does
    state.copy_(new_state)
    if D is not None:
        y = y + D.to(cdt) * x_f
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    impl: Impl = "auto",
) -> torch.Tensor:
    """One step of the selective-scan recurrence; `state` is updated IN PLACE.

    Args:
        state: [B, Din, N] recurrent state, fp32 (kept at a fixed address for CUDA graphs).
        x: [B, Din] input u_t.
        dt: [B, Din] step size before `dt_bias` and softplus.
        A: [Din, N]; B, C: [B, N]; D: [Din] or None; z: [B, Din] or None; dt_bias: [Din] or None.
        dt_softplus: apply softplus to dt (after the bias).
        impl: as in `selective_scan`; the kernel is mamba_ssm's Triton `selective_state_update`.

    Returns:
        y: [B, Din] in x's dtype. Stepping T times equals `selective_scan` over the T steps.
    """
    if state.dim() != 3 or tuple(state.shape[:2]) != tuple(x.shape) or state.shape[2] != A.shape[1]:
        raise ValueError(f"state must be [B, Din, N] matching x {tuple(x.shape)} and A {tuple(A.shape)}; got {tuple(state.shape)}")
    unavailable = _kernel_unavailable(
        _kernel_selective_state_update if HAS_MAMBA_KERNELS else None,
        "mamba_ssm.ops.triton.selective_state_update",
        [x, state, dt, A, B, C, D, z, dt_bias],
    )
    if _use_kernel("selective_state_update", impl, unavailable, x.is_cuda):
        return _kernel_selective_state_update(state, x, dt, A.float(), B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)  # pragma: no mutate
    return _selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
