"""Frames -> one feature vector per frame: image preprocessing and the CLIP vision wrapper.

Notation: N frames (any batch of frames flattened), H x W input size, S the tower's image
size, P patches per frame (P = (S / patch)^2), Dv the tower width.

- `FrameProcessor` is the one preprocessing path, used identically by training, the
  evaluators and the streaming runtime: uint8 RGB frames -> pad to square with the CLIP
  mean colour ("pad", what the original trained with) or resize-and-centre-crop ("crop")
  -> bicubic resize to S -> scale to [0, 1] -> normalise. Pure torch (no torchvision).
- `VisionEncoder` wraps HF `CLIPVisionModel`: it runs the embeddings and only the first
  k encoder layers needed for `vision_feature_layer` (layer -2 of 24 runs 23 layers), drops
  the CLS token and pools the P patch tokens into one vector per frame; or ("cls+GxG", the
  per-frame-LLM baseline's VideoLLM-online layout) keeps the CLS token and average-pools
  the patch grid to G x G, 1 + G^2 vectors per frame.

The original code (`clip_encoder.py`) selected `hidden_states[-2]` after running all 24
layers, and padded frames in training but centre-cropped them at inference; both are fixed
here. Reference: docs/design.md §2 and §7.2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class FrameProcessor:
    """uint8 RGB frames -> normalised pixel values [N, 3, S, S].

    Args:
        image_size: S, the tower's input size.
        mean, std: per-channel normalisation (in [0, 1] units).
        mode: "pad" (pad to square with the mean colour, then resize) or "crop"
            (resize the short side to S, then centre crop).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], mode: str = "pad"):
        if mode not in ("pad", "crop"):
            raise ValueError(f"image preprocessing mode must be 'pad' or 'crop', got {mode!r}")
        self.image_size = image_size
        self.mode = mode
        self.mean = torch.tensor(mean, dtype=torch.float32, device="cpu").view(1, 3, 1, 1)  # CPU whatever the default device
        self.std = torch.tensor(std, dtype=torch.float32, device="cpu").view(1, 3, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean, std [1, 3, 1, 1] on `device` (copied there once, not per frame)."""
        if device not in self._on_device:
            self._on_device[device] = (self.mean.to(device), self.std.to(device))
        return self._on_device[device]

    @classmethod
    def from_config(cls, config) -> FrameProcessor:
        return cls(config.vision_config.image_size, config.image_mean, config.image_std, config.image_preprocess)

    def __call__(self, frames, device: torch.device | str | None = None) -> torch.Tensor:
        """Preprocess frames.

        Args:
            frames: uint8 RGB as a numpy array or tensor [N, H, W, 3] or [H, W, 3], or a list
                of such arrays / PIL images (sizes may differ).
            device: where to compute (default: where `frames` are, the CPU for numpy). The
                frames travel as uint8, a quarter of the bytes of the float result; on a GPU
                the resize and normalisation are a few kernels instead of CPU work.
        Returns:
            float32 pixel values [N, 3, S, S] on `device`.
        """
        if isinstance(frames, (list, tuple)):
            if not frames:
                return torch.empty(0, 3, self.image_size, self.image_size, device=device)
            return torch.cat([self(np.asarray(f) if not isinstance(f, torch.Tensor) else f, device) for f in frames])
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected RGB frames shaped [N, H, W, 3], got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames (0..255), got {x.dtype}")
        if device is not None:
            x = x.to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # [N, H, W, 3] -> [N, 3, H, W], uint8
        # Padding happens on the uint8 frame (the fill colour is whole numbers, so the values are
        # the same), and only the square canvas becomes float: a quarter of the bytes to move.
        x = self._pad_to_square(x).float() if self.mode == "pad" else self._resize_short_side(x.float())  # 0..255
        if self.mode == "crop":
            x = self._center_crop(x)
        elif x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True)
        # Bicubic overshoots; clamp to the valid pixel range before normalising (as PIL does).
        x = x.clamp_(0.0, 255.0) / 255.0
        mean, std = self._mean_std(x.device)
        return (x - mean) / std

    def _pad_to_square(self, x: torch.Tensor) -> torch.Tensor:
        """Pad [N, 3, H, W] to [N, 3, L, L] (L = max(H, W)) with the mean colour, centred."""
        n, _, h, w = x.shape
        side = max(h, w)
        if h == w:
            return x
        fill = (self._mean_std(x.device)[0] * 255.0).round().to(x.dtype)  # the original's expand2square fills with int(mean * 255)
        out = fill.expand(n, 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        out[:, :, top : top + h, left : left + w] = x
        return out

    def _resize_short_side(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)

    def _center_crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = (h - self.image_size) // 2, (w - self.image_size) // 2
        return x[:, :, top : top + self.image_size, left : left + self.image_size]


def grid_size(pooling: str) -> int | None:
    """G of a "cls+GxG" pooling (None for the one-vector poolings)."""
    match = re.fullmatch(r"cls\+(\d+)x(\d+)", pooling)
    if match is None:
        return None
    if match[1] != match[2] or int(match[1]) < 1:
        raise ValueError(f"pooling {pooling!r}: the grid must be square and at least 1x1, e.g. 'cls+3x3'")
    return int(match[1])


class VisionEncoder(nn.Module):
    """CLIP vision tower -> pooled features of each frame.

    Args:
        config: the CLIP vision config.
        feature_layer: hidden-state index to read (-2 = penultimate, as LLaVA / VideoLLaMA2).
        pooling: "mean" or "max" over the P patch tokens, "cls" (the CLS token), all three one
            vector per frame; or "cls+GxG", the CLS token followed by the patch grid
            average-pooled to G x G (VideoLLM-online's 1 + 3x3 tokens per frame).
        clip: an already built (e.g. pretrained) `CLIPVisionModel` to wrap instead of a fresh one.
    """

    def __init__(self, config: CLIPVisionConfig, feature_layer: int = -2, pooling: str = "mean", clip: CLIPVisionModel | None = None):
        super().__init__()
        self.clip = clip if clip is not None else CLIPVisionModel(config)
        n = config.num_hidden_layers
        self.num_layers_to_run = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        if not 0 <= self.num_layers_to_run <= n:
            raise ValueError(f"feature_layer {feature_layer} out of range for a {n}-layer CLIP")
        self.grid = grid_size(pooling)
        if pooling not in ("mean", "max", "cls") and self.grid is None:
            raise ValueError(f"pooling must be 'mean', 'max', 'cls' or 'cls+GxG', got {pooling!r}")
        self.pooling = pooling

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    @property
    def tokens_per_frame(self) -> int:
        """Feature vectors per frame: 1, or 1 + G^2 for "cls+GxG"."""
        return 1 if self.grid is None else 1 + self.grid**2

    def forward(self, pixel_values: torch.Tensor, run_layer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """pixel_values [N, 3, S, S] -> pooled frame features [N, Dv], or [N, 1 + G^2, Dv] for "cls+GxG".

        `run_layer(layer, h)` applies one encoder layer (default `apply_clip_layer`; the
        inference engine passes a compiled one).
        """
        run_layer = run_layer or apply_clip_layer
        clip = self.clip
        dtype = clip.embeddings.patch_embedding.weight.dtype
        h = clip.embeddings(pixel_values.to(dtype))  # [N, 1 + P, Dv]
        h = clip.pre_layrnorm(h)
        # Only the layers up to the selected one run; later layers would be thrown away.
        for layer in clip.encoder.layers[: self.num_layers_to_run]:
            h = run_layer(layer, h)
        if self.pooling == "cls":
            return h[:, 0]
        patches = h[:, 1:]  # drop CLS: [N, P, Dv]
        if self.grid is not None:
            n, p, d = patches.shape
            side = int(round(p**0.5))
            grid = patches.transpose(1, 2).reshape(n, d, side, side)  # [N, Dv, sqrt(P), sqrt(P)]
            pooled = F.adaptive_avg_pool2d(grid, self.grid).flatten(2).transpose(1, 2)  # [N, G^2, Dv]
            return torch.cat([h[:, :1], pooled], dim=1)  # [N, 1 + G^2, Dv]
        return patches.mean(dim=1) if self.pooling == "mean" else patches.amax(dim=1)

    def encode_frames(self, pixel_values: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """Like `forward`, in fixed-size chunks so long clips never OOM: [N, 3, S, S] -> [N, Dv] (or [N, 1 + G^2, Dv])."""
        if pixel_values.shape[0] <= chunk_size:
            return self(pixel_values)
        return torch.cat([self(chunk) for chunk in pixel_values.split(chunk_size)])


def apply_clip_layer(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One CLIP encoder layer on hidden states h [N, 1 + P, Dv] (no attention mask)."""
    return layer(h, None)


__all__ = ["FrameProcessor", "VisionEncoder", "apply_clip_layer", "grid_size"]
