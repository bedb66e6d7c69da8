"""The Event-Preserving Feature Extractor (EPFE): one perception token per frame, constant cost.

    h_t    = LeakyReLU(pre_proj(c_t))                       c_t: the pooled CLIP feature of frame t
    r_t    = h_t + mixer(norm(h))_t                         one pre-norm Mamba-1 block, residual
    F_t    = post_proj(LeakyReLU(norm_f(r_t)))              the perception token (LLM width)

The mixer is a Mamba-1 selective SSM, so the whole history before frame t is folded into a
fixed-size state: a conv buffer of the last d_conv mixer inputs and an SSM state of d_state per
channel (`PerceptionState`). Two modes compute the same function with the same weights:
`forward` runs the parallel scan over a clip (training), `step` advances one frame in O(1)
(streaming); `forward` can also continue from, and update, a state.

Notation used for tensor shapes:
    B    batch
    T    frames
    Dv   vision feature width (1024 for CLIP ViT-L)
    D    model width (the LLM's, 4096 for Mistral-7B)
    Din  mixer inner width, expand * D
    N    SSM state size per channel (d_state)
    W    conv width (d_conv)
    R    dt_rank

Notable choices:
    - `temporal="none"` (the "without the Mamba block" ablation) drops the block: each token is
      then a function of its own frame only (pooled features straight through the two linear
      maps), and the state is empty. The gate and the LLM still see the turn's tokens in order.
    - `MambaMixer` parameter names and shapes are exactly mamba_ssm's `Mamba` (in_proj, conv1d,
      x_proj, dt_proj, A_log, D, out_proj) and the block's are its `Block` (norm, mixer), so the
      original StreamMind checkpoints (built with mamba_ssm 2.2) map 1:1.
    - The selective scan and the causal conv go through `streammind.ops`: the mamba_ssm /
      causal_conv1d kernels when installed and on CUDA, otherwise the PyTorch reference. The SSM
      runs in fp32 and its state is fp32 whatever the model dtype; the conv state is kept in the
      activation dtype (it stores in_proj outputs verbatim).
    - The dt bias is added inside the scan in fp32 (`delta_bias`), as mamba_ssm does, rather
      than by dt_proj: the softplus of a small dt is sensitive to bf16 rounding.
    - States are updated in place so that their addresses never change (CUDA graphs, as in
      transformers' `MambaCache`).

References:
    Ding et al., "StreamMind" (ICCV 2025), Fig. 1 and the EPFE description; the layer layout
    (PreNet Linear + LeakyReLU, one Mamba block with final LayerNorm, PostNet LeakyReLU + Linear)
    is read from the released code, see docs/design.md §7.2.
    Gu & Dao, "Mamba" (2023), §3 and the `mamba_ssm` package (`modules/mamba_simple.py`: layer
    layout, parameter names, initialisation, the step recurrence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .ops import causal_conv1d, causal_conv1d_final_state, causal_conv1d_update, selective_scan, selective_state_update


@dataclass
class PerceptionState:
    """Recurrent state of the EPFE's mixer for a batch of B independent streams.

    Attributes:
        conv_state: [B, Din, W] the last W conv inputs, newest last, in the activation dtype.
        ssm_state: [B, Din, N] the SSM state, fp32.

    Updates are in-place copies, so with autograd enabled the buffers carry the graph of the last
    update: stream under `torch.inference_mode()` (as `StreamingSession` does), and detach between
    chunks for truncated backpropagation through time.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor

    @classmethod
    def allocate(
        cls,
        batch_size: int,
        d_inner: int,
        d_conv: int,
        d_state: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PerceptionState:
        """Zero state for `batch_size` streams; `dtype` is the conv state's (the SSM state is fp32)."""
        return cls(
            conv_state=torch.zeros(batch_size, d_inner, d_conv, device=device, dtype=dtype),
            ssm_state=torch.zeros(batch_size, d_inner, d_state, device=device, dtype=torch.float32),
        )

    @property
    def batch_size(self) -> int:
        return self.conv_state.shape[0]

    def reset(self) -> None:
        """Zero both buffers in place (their addresses stay the same, for CUDA graphs)."""
        self.conv_state.zero_()
        self.ssm_state.zero_()


class MambaMixer(nn.Module):
    """Mamba-1 selective-SSM mixer, [B, T, D] -> [B, T, D], with a parallel and a recurrent mode.

    Args:
        d_model: D.
        d_state: N, SSM state size per channel.
        d_conv: W, width of the depthwise causal conv.
        expand: Din = expand * D.
        dt_rank: R, rank of the dt projection; "auto" = ceil(D / 16).
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        dt_init_floor: lower clamp of the initial step sizes.
        conv_bias: bias in the conv.
        bias: bias in in_proj and out_proj.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init_floor = dt_init_floor

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        # Optimisers should not decay the SSM's A and skip D (mamba_ssm's convention).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        # The dt bias encodes the step-size range; a generic "zero all Linear biases" init must skip it.
        self.dt_proj.bias._no_reinit = True
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter as mamba_ssm's `Mamba` does; deterministic given the torch RNG.

        - in_proj, conv1d, x_proj, out_proj: PyTorch's default (kaiming-uniform weights with
          a = sqrt(5), uniform biases), as mamba_ssm leaves them. Its LM-level rescaling of
          out_proj by 1/sqrt(n_layer) is the identity for our single block.
        - dt_proj.weight ~ U(-R^-0.5, R^-0.5), so dt_proj's output variance is independent of R.
        - dt_proj.bias = softplus^-1(dt) with dt = exp(U(log dt_min, log dt_max)) clamped below at
          dt_init_floor: the initial step sizes (after the scan's softplus) span [dt_min, dt_max].
        - A_log[d, n] = log(n + 1) (S4D-real: A = -(1..N) for every channel); D = 1.
        """
        self.in_proj.reset_parameters()
        self.conv1d.reset_parameters()
        self.x_proj.reset_parameters()
        dt_init_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        device = self.dt_proj.bias.device
        log_dt = torch.rand(self.d_inner, device=device) * (math.log(self.dt_max) - math.log(self.dt_min))
        dt = torch.exp(log_dt + math.log(self.dt_min)).clamp(min=self.dt_init_floor)  # [Din]
        # softplus^-1(dt) = log(exp(dt) - 1) = dt + log(1 - exp(-dt)), written with expm1 for small dt.
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device)  # [N]
        self.A_log.copy_(torch.log(A).expand(self.d_inner, -1))  # [Din, N]
        self.D.fill_(1.0)
        self.out_proj.reset_parameters()

    def _check_state(self, state: PerceptionState, batch_size: int) -> None:
        """Raise when `state` does not fit this mixer and batch."""
        expected_conv = (batch_size, self.d_inner, self.d_conv)
        expected_ssm = (batch_size, self.d_inner, self.d_state)
        if tuple(state.conv_state.shape) != expected_conv or tuple(state.ssm_state.shape) != expected_ssm:
            raise ValueError(
                f"state has conv {tuple(state.conv_state.shape)} and ssm {tuple(state.ssm_state.shape)}; "
                f"this mixer needs {expected_conv} and {expected_ssm}"
            )

    def _ssm_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input-dependent dt (before bias), B and C from the conv output u [..., Din]."""
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # [..., R|N|N]
        dt = F.linear(dt, self.dt_proj.weight)  # [..., Din]; the bias is added in fp32 by the scan
        return dt, B, C

    def forward(self, x: torch.Tensor, state: PerceptionState | None = None) -> torch.Tensor:
        """Parallel mode over a sequence.

        Args:
            x: [B, T, D].
            state: when given, the sequence continues from it and it is updated IN PLACE to the
                state after the last frame; None starts from zeros and keeps nothing.

        Returns:
            [B, T, D] in x's dtype.
        """
        if state is not None:
            self._check_state(state, x.shape[0])
        xz = self.in_proj(x).transpose(1, 2)  # [B, T, 2*Din] -> [B, 2*Din, T]
        u, z = xz.chunk(2, dim=1)  # [B, Din, T] each
        conv_weight = self.conv1d.weight[:, 0, :]  # [Din, 1, W] -> [Din, W]
        conv_init = state.conv_state if state is not None else None
        next_conv_state = causal_conv1d_final_state(u, self.d_conv, conv_init) if state is not None else None
        u = causal_conv1d(u, conv_weight, self.conv1d.bias, activation="silu", initial_state=conv_init)  # [B, Din, T]
        dt, B, C = self._ssm_inputs(u.transpose(1, 2))  # [B, T, Din], [B, T, N], [B, T, N]
        A = -torch.exp(self.A_log.float())  # [Din, N], negative so that the state decays
        result = selective_scan(
            u,
            dt.transpose(1, 2),  # [B, Din, T]
            A,
            B.transpose(1, 2),  # [B, N, T]
            C.transpose(1, 2),  # [B, N, T]
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            initial_state=state.ssm_state if state is not None else None,
            return_last_state=state is not None,
        )
        if state is not None:
            y, last_ssm_state = result
            state.conv_state.copy_(next_conv_state)
            state.ssm_state.copy_(last_ssm_state)
        else:
            y = result
        return self.out_proj(y.transpose(1, 2))  # [B, Din, T] -> [B, T, D]

    def step(self, x: torch.Tensor, state: PerceptionState) -> torch.Tensor:
        """Recurrent mode: one frame, x [B, D] -> [B, D]; `state` is advanced IN PLACE."""
        self._check_state(state, x.shape[0])
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, Din] each
        conv_weight = self.conv1d.weight[:, 0, :]  # [Din, W]
        u = causal_conv1d_update(u, state.conv_state, conv_weight, self.conv1d.bias, activation="silu")  # [B, Din]
        dt, B, C = self._ssm_inputs(u)  # [B, Din], [B, N], [B, N]
        A = -torch.exp(self.A_log.float())  # [Din, N]
        y = selective_state_update(
            state.ssm_state,
            u,
            dt,
            A,
            B,
            C,
            D=self.D.float(),
            z=z,
            dt_bias=self.dt_proj.bias.float(),
            dt_softplus=True,
        )  # [B, Din]
        return self.out_proj(y)  # [B, D]


class PerceptionBlock(nn.Module):
    """Pre-norm residual Mamba block: x + mixer(norm(x)) (mamba_ssm's `Block` without an MLP)."""

    def __init__(self, d_model: int, mixer: MambaMixer, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.mixer = mixer

    def forward(self, x: torch.Tensor, state: PerceptionState | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; `state` as in `MambaMixer.forward`."""
        return x + self.mixer(self.norm(x), state)

    def step(self, x: torch.Tensor, state: PerceptionState) -> torch.Tensor:
        """x [B, D] -> [B, D]; `state` advanced in place."""
        return x + self.mixer.step(self.norm(x), state)


class PerceptionEncoder(nn.Module):
    """The EPFE: pooled frame features [B, T, Dv] -> perception tokens [B, T, D].

    Args:
        vision_dim: Dv.
        d_model: D (the LLM width; tokens are inserted as LLM input embeddings).
        d_state, d_conv, expand, dt_rank: the mixer's sizes (see `MambaMixer`).
        norm_eps: epsilon of both LayerNorms.
        leaky_relu_slope: negative slope of both LeakyReLUs.
        temporal: "mamba" (the EPFE) or "none" (no block: per-frame linear maps, an ablation).
    """

    def __init__(
        self,
        vision_dim: int,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        norm_eps: float = 1e-5,
        leaky_relu_slope: float = 0.01,
        temporal: Literal["mamba", "none"] = "mamba",
    ):
        super().__init__()
        if temporal not in ("mamba", "none"):
            raise ValueError(f"temporal must be 'mamba' or 'none', got {temporal!r}")
        self.vision_dim = vision_dim
        self.d_model = d_model
        self.leaky_relu_slope = leaky_relu_slope
        self.pre_proj = nn.Linear(vision_dim, d_model)
        self.block = None
        if temporal == "mamba":
            mixer = MambaMixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
            self.block = PerceptionBlock(d_model, mixer, norm_eps=norm_eps)
        self.norm_f = nn.LayerNorm(d_model, eps=norm_eps)
        self.post_proj = nn.Linear(d_model, d_model)

    @property
    def d_inner(self) -> int:
        return 0 if self.block is None else self.block.mixer.d_inner

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise: PyTorch defaults for the projections and norms, Mamba's scheme for the mixer."""
        self.pre_proj.reset_parameters()
        if self.block is not None:
            self.block.norm.reset_parameters()
            self.block.mixer.init_weights()
        self.norm_f.reset_parameters()
        self.post_proj.reset_parameters()

    def init_state(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PerceptionState:
        """Zero state for `batch_size` streams; device and conv dtype default to the parameters'.
        Without the block the state is empty ([B, 0, 0]), so callers need no special case."""
        mixer = self.block.mixer if self.block is not None else None
        weight = self.pre_proj.weight
        return PerceptionState.allocate(
            batch_size,
            self.d_inner,
            mixer.d_conv if mixer is not None else 0,
            mixer.d_state if mixer is not None else 0,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Block output [..., D] -> perception tokens [..., D]."""
        return self.post_proj(F.leaky_relu(self.norm_f(h), self.leaky_relu_slope))

    def forward(self, features: torch.Tensor, state: PerceptionState | None = None) -> torch.Tensor:
        """Parallel mode.

        Args:
            features: [B, T, Dv] pooled frame features.
            state: when given, the clip continues that state, which is updated IN PLACE to the
                state after its last frame (so clips can be fed in pieces, or handed to `step`).

        Returns:
            tokens: [B, T, D].
        """
        if features.dim() != 3 or features.shape[-1] != self.vision_dim:
            raise ValueError(f"features must be [B, T, Dv={self.vision_dim}]; got {tuple(features.shape)}")
        h = F.leaky_relu(self.pre_proj(features), self.leaky_relu_slope)  # [B, T, D]
        return self._head(h if self.block is None else self.block(h, state))  # [B, T, D]

    def step(self, feature: torch.Tensor, state: PerceptionState) -> tuple[torch.Tensor, PerceptionState]:
        """Recurrent mode, O(1) per frame: feature [B, Dv] -> (token [B, D], the same state advanced)."""
        if feature.dim() != 2 or feature.shape[-1] != self.vision_dim:
            raise ValueError(f"feature must be [B, Dv={self.vision_dim}]; got {tuple(feature.shape)}")
        h = F.leaky_relu(self.pre_proj(feature), self.leaky_relu_slope)  # [B, D]
        return self._head(h if self.block is None else self.block.step(h, state)), state
