"""Depthwise causal 1-D convolution (Mamba's short conv): PyTorch reference, step update, kernel dispatch.

    out[b, d, t] = act(bias[d] + sum_{k=0}^{W-1} weight[d, k] * x[b, d, t - (W-1) + k])

with x[b, d, t] for t < 0 taken from the initial state (zeros when there is none).

Notation used for tensor shapes:
    B    batch
    Din  channels (Mamba's d_inner)
    T    time steps (frames)
    W    kernel width (Mamba's d_conv)

Functions:
    causal_conv1d_ref          F.conv1d on the left-padded sequence, computed in fp32 (runtime path).
    causal_conv1d              the single dispatch point: the causal_conv1d CUDA kernel or the reference.
    causal_conv1d_update       one step on a [B, Din] input; the conv state is updated in place.
    causal_conv1d_final_state  the conv state after a whole sequence, so that a parallel forward can
                               hand over to step mode.
    override_impl              context manager forcing one path (tests).

Notable choices:
    - The conv state holds the last W inputs, [B, Din, W], newest last, as mamba_ssm's `Mamba.step`
      keeps it. A step rolls it left by one and writes the new input into the last column; the output
      is then the state's dot product with the kernel. The parallel path only needs the last W-1
      columns of such a state as left context, so `initial_state` is accepted in this same [B, Din, W]
      layout (its oldest column is ignored), and one state object serves both modes.
    - The kernel path prepends the W-1 context columns to x and drops the first W-1 outputs instead of
      passing the package's `initial_states`, which requires a channel-last layout; the result is the
      same convolution.
    - The reference paths compute in fp32 (fp64 for fp64 inputs); outputs are cast back to x's dtype.

References:
    Dao, causal-conv1d (`causal_conv1d/causal_conv1d_interface.py`: argument conventions, state of
    width >= W-1); mamba_ssm `modules/mamba_simple.py` `Mamba.step` (roll-and-insert state update).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .dispatch import Impl, KernelDispatch

try:
    from causal_conv1d import causal_conv1d_fn as _kernel_causal_conv1d
    from causal_conv1d import causal_conv1d_update as _kernel_causal_conv1d_update
except ImportError:
    _kernel_causal_conv1d = None
    _kernel_causal_conv1d_update = None

HAS_CAUSAL_CONV1D_KERNELS = _kernel_causal_conv1d is not None

Activation = Literal["silu"] | None
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNEL_WIDTHS = (2, 3, 4)
_INSTALL_HINT = "install it with `pip install causal-conv1d` (or `pip install 'streammind[kernels]'`)"


_dispatch = KernelDispatch("causal_conv1d", __name__)
override_impl = _dispatch.override_impl
_use_kernel = _dispatch.use_kernel


def _kernel_unavailable(
    kernel: object, x: torch.Tensor, weight: torch.Tensor, others: list[torch.Tensor | None]
) -> tuple[type[Exception], str] | None:
    """Why the causal_conv1d kernel cannot take these tensors, as (exception type, reason), or None."""
    if kernel is None or not HAS_CAUSAL_CONV1D_KERNELS:
        return ImportError, f"the causal_conv1d package is not importable; {_INSTALL_HINT}"
    if not all(t.is_cuda for t in (x, weight, *others) if t is not None):
        return ValueError, "the tensors are not on CUDA"
    # pragma: no mutate block (reached only with CUDA tensors; the GPU tests in tests/ops cover it)
    if x.dtype not in _KERNEL_DTYPES or weight.dtype not in _KERNEL_DTYPES:
        return ValueError, f"dtypes {x.dtype}/{weight.dtype} are not supported by the kernel"
    if weight.shape[1] not in _KERNEL_WIDTHS:
        return ValueError, f"width {weight.shape[1]} is not supported by the kernel ({_KERNEL_WIDTHS})"
    return None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The reference paths compute in fp32, or in fp64 when given fp64 inputs (exact tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_activation(activation: Activation) -> None:
    """Raise on anything but None or "silu"."""
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def _check_state(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None, name: str) -> None:
    """Raise unless `state` is None or [B, Din, W] for x [B, Din, ...] and weight [Din, W]."""
    expected = (x.shape[0], weight.shape[0], weight.shape[1])
    if state is not None and tuple(state.shape) != expected:
        raise ValueError(f"{name} must be [B, Din, W] = {expected}; got {tuple(state.shape)}")


def _left_context(x: torch.Tensor, width: int, initial_state: torch.Tensor | None) -> torch.Tensor:
    """x [B, Din, T] with its W-1 previous inputs prepended (zeros, or the state's newest W-1)."""
    if initial_state is None:
        return F.pad(x, (width - 1, 0))  # [B, Din, T + W - 1]
    return torch.cat([initial_state[:, :, 1:].to(x.dtype), x], dim=2)  # [B, Din, T + W - 1]


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: Activation = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution in plain PyTorch (fp32 compute, fp64 for fp64 inputs; differentiable).

    Args:
        x: [B, Din, T] input.
        weight: [Din, W] depthwise kernel (an nn.Conv1d weight [Din, 1, W] with the middle dim dropped).
        bias: [Din] or None.
        activation: None or "silu".
        initial_state: [B, Din, W] conv state holding the W inputs before x (newest last; only the
            newest W-1 are used), or None for zeros.

    Returns:
        out: [B, Din, T] in x's dtype.
    """
    _check_activation(activation)
    _check_state(x, weight, initial_state, "initial_state")
    width = weight.shape[1]
    cdt = _compute_dtype(x)
    padded = _left_context(x.to(cdt), width, initial_state)  # [B, Din, T + W - 1]
    bias_c = bias.to(cdt) if bias is not None else None
    out = F.conv1d(padded, weight.to(cdt)[:, None, :], bias_c, groups=weight.shape[0])  # [B, Din, T]
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: Activation = None,
    initial_state: torch.Tensor | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Depthwise causal convolution through the causal_conv1d kernel or the reference.

    Arguments and return as `causal_conv1d_ref`. `impl`:
        "auto"   the kernel when causal_conv1d imports, the tensors are on CUDA, the dtypes are
                 float32/float16/bfloat16 and W is 2, 3 or 4; otherwise the reference. Logged once.
        "ref"    always the reference.
        "kernel" always the kernel; raises ImportError (naming causal_conv1d) when it is missing and
                 ValueError when the inputs are unsupported.
    An active `override_impl(...)` block replaces `impl`.
    """
    _check_activation(activation)
    _check_state(x, weight, initial_state, "initial_state")
    unavailable = _kernel_unavailable(_kernel_causal_conv1d, x, weight, [bias, initial_state])
    if not _use_kernel("causal_conv1d", impl, unavailable, x.is_cuda):
        return causal_conv1d_ref(x, weight, bias, activation, initial_state)
    # pragma: no mutate block (the kernel path needs CUDA and causal_conv1d; the GPU tests in tests/ops cover it)
    if initial_state is None:
        return _kernel_causal_conv1d(x, weight, bias, activation=activation)
    width = weight.shape[1]
    padded = _left_context(x, width, initial_state)  # [B, Din, T + W - 1]
    return _kernel_causal_conv1d(padded, weight, bias, activation=activation)[:, :, width - 1 :]


def causal_conv1d_final_state(x: torch.Tensor, width: int, initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """The conv state after consuming x: its last W inputs, [B, Din, W], newest last.

    Args:
        x: [B, Din, T] the convolution's input sequence.
        width: W, the kernel width.
        initial_state: [B, Din, W] state before x, or None (zeros; short sequences are left-zero-padded).

    Returns:
        [B, Din, W] in x's dtype; a new tensor (copy it into a persistent state buffer if needed).
    """
    if initial_state is None:
        history = F.pad(x, (max(width - x.shape[2], 0), 0))  # [B, Din, max(T, W)]
    else:
        history = torch.cat([initial_state.to(x.dtype), x], dim=2)  # [B, Din, W + T]
    return history[:, :, -width:].clone()


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: Activation = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """One step of the causal convolution; `conv_state` is updated IN PLACE.

    Args:
        x: [B, Din] the newest input.
        conv_state: [B, Din, W] the last W inputs, newest last. Rolled left by one and x written
            into the last column, at a fixed address (CUDA graphs).
        weight: [Din, W]; bias: [Din] or None; activation: None or "silu".
        impl: as in `causal_conv1d`.

    Returns:
        out: [B, Din] in x's dtype; stepping T times equals `causal_conv1d` over the T inputs.
    """
    _check_activation(activation)
    _check_state(x, weight, conv_state, "conv_state")
    unavailable = _kernel_unavailable(_kernel_causal_conv1d_update, x, weight, [bias, conv_state])
    if unavailable is None and conv_state.dtype != x.dtype:  # pragma: no mutate (CUDA only)
        unavailable = ValueError, f"conv_state dtype {conv_state.dtype} differs from x dtype {x.dtype}"  # pragma: no mutate
    if _use_kernel("causal_conv1d_update", impl, unavailable, x.is_cuda):
        return _kernel_causal_conv1d_update(x, conv_state, weight, bias, activation)  # pragma: no mutate
    window = torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=2)  # [B, Din, W], rolled
    # The output reads `window`, not the buffer, so autograd never sees the buffer's in-place writes.
    conv_state.copy_(window)
    cdt = _compute_dtype(x)
    out = torch.einsum("bdw,dw->bd", window.to(cdt), weight.to(cdt))  # [B, Din]
    if bias is not None:
        out = out + bias.to(cdt)
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype)
