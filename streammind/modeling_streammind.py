"""StreamMindForCausalLM: vision -> EPFE perception tokens -> gate and LLM, composed.

Notation: B videos, T frames (padded), S text tokens, Dv vision width, D LLM width,
K turns of a dialogue, k_i placeholders in turn i.

    frames --FrameProcessor--> pixel_values [B, T, 3, H, W]
        --VisionEncoder (CLIP, layer -2, pooled)--> features [B, T, Dv]
        --PerceptionEncoder (EPFE: Linear, Mamba, LN, Linear)--> tokens [B, T, D]
    tokens --CognitionGate--> per-frame logits [B, T, 2]           (stage-2 loss)
    tokens --sampling per turn--> k_i tokens --mask-scatter into <video> positions--> LLM
                                                                    (stage-1 loss)

The top model composes its parts (transformers' `LlavaModel` pattern); it does not inherit
from the LLM class. `forward` computes losses from a batch; how a live session runs lives in
`streaming.py`. Placeholders are laid out by the processor; here we only check the count
and scatter (no re-padding, truncation or label surgery inside `forward`).

Batch keys (all optional except where a loss needs them):
    pixel_values [B, T, 3, H, W] or frame_features [B, T, Dv] (a precomputed-feature cache)
    frame_mask [B, T] bool — real frames (a prefix of each row); `forward` accepts it with the
        batch but does not need it: turn_ends and the gate's segments already leave padding out
    input_ids, attention_mask, labels [B, S] — the dialogue (stage 1)
    turn_ends [B, K] long — end (exclusive) frame index of each turn, -1 padding (stage 1)
    gate_labels [B, T] long — 0 silent / 1 respond / -100 ignore (stage 2)
    gate_prompt_ids [B, L] long, gate_prompt_mask [B, L] — the gate's prompt, right-padded
    gate_segment_sample [N], gate_segment_frames [N, F] long — the gate's segments
        (`gate.GateLayout`), laid out by the collator from the labels and the window

The bounded-state rules have one definition each, shared with the processor, the collator and
the inference engine: the turn memory (`sampling.memory_frames`) and the gate's window
(`gate.turn_position`, through `gate.gate_layout`). The gate loss is a training setting
(`gate.GateLossConfig`), passed to `forward` by the trainer.

Reference: docs/design.md §2-3; the composition follows transformers' `LlavaModel` (`modeling_llava.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration import StreamMindConfig
from .fileio import atomic_directory
from .gate import CognitionGate, GateLayout, GateLossConfig, gate_layout, gate_loss
from .perception import MambaMixer, PerceptionEncoder
from .sampling import memory_frames, select_indices
from .vision import VisionEncoder


@dataclass
class StreamMindOutput(ModelOutput):
    """Losses and logits of a forward pass (absent parts are None)."""

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    gate_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    gate_logits: torch.Tensor | None = None
    perception_tokens: torch.Tensor | None = None


class StreamMindPreTrainedModel(PreTrainedModel):
    config_class = StreamMindConfig
    config: StreamMindConfig
    base_model_prefix = "streammind"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "MistralDecoderLayer", "PerceptionEncoder"]

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models (CLIP, the gate's and the LLM's decoders) initialise themselves; this
        # covers our own modules. Children are visited before parents, so the mixer's own
        # scheme (dt bias as an inverse softplus, A_log = log(1..N)) overrides the generic
        # N(0, 0.02) its Linear layers got; plain N(0, 0.02) would break the SSM.
        std = self.config.text_config.initializer_range
        if isinstance(module, MambaMixer):
            module.init_weights()
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class StreamMindForCausalLM(StreamMindPreTrainedModel):
    """The whole model: `vision`, `perception`, `gate`, `language_model`.

    Args:
        config: the composite config.
        vision: optional pretrained `CLIPVisionModel` to use as the tower.
        language_model: optional pretrained causal LM (otherwise built from `text_config`).
    """

    def __init__(self, config: StreamMindConfig, vision: nn.Module | None = None, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.vision = VisionEncoder(config.vision_config, config.vision_feature_layer, config.frame_pooling, clip=vision)
        self.perception = PerceptionEncoder(
            vision_dim=config.vision_dim,
            d_model=config.hidden_size,
            d_state=config.perception_d_state,
            d_conv=config.perception_d_conv,
            expand=config.perception_expand,
            dt_rank=config.dt_rank,
            temporal=config.perception_temporal,
        )
        self.gate = CognitionGate(config.gate_config)
        self.language_model = language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, written atomically (`streammind.fileio`): the files go
        to a temporary directory first, so a crash never leaves half a model (Trainer
        checkpoints included). Pushing to the hub keeps the plain path (the directory name is
        the repository name there)."""
        if kwargs.get("push_to_hub"):
            return super().save_pretrained(save_directory, *args, **kwargs)
        with atomic_directory(save_directory) as tmp:
            super().save_pretrained(tmp, *args, **kwargs)

    # ---- features -------------------------------------------------------------------------

    def get_frame_features(self, pixel_values: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """pixel_values [B, T, 3, H, W] -> pooled CLIP features [B, T, Dv] (no grad when frozen)."""
        B, T = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1)  # [B*T, 3, H, W]
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            feats = self.vision.encode_frames(flat, chunk_size=chunk_size)
        return feats.view(B, T, -1)

    def get_perception_tokens(self, pixel_values: torch.Tensor | None = None, frame_features: torch.Tensor | None = None) -> torch.Tensor:
        """Frames or cached features -> perception tokens [B, T, D] (EPFE, parallel scan)."""
        if (pixel_values is None) == (frame_features is None):
            raise ValueError("pass exactly one of pixel_values or frame_features")
        if frame_features is None:
            frame_features = self.get_frame_features(pixel_values)
        dtype = self.perception.pre_proj.weight.dtype
        return self.perception(frame_features.to(dtype))

    def select_turn_tokens(self, tokens: torch.Tensor, turn_ends: torch.Tensor) -> list[torch.Tensor]:
        """For each video, the sampled tokens of every turn, concatenated in order: B x [sum k_i, D].

        A turn's frames are those since the previous turn's end, of which the turn memory holds
        the newest (`memory_frames`); sampling then picks among them (`select_indices`).
        """
        out = []
        for b in range(tokens.shape[0]):
            ends = [int(e) for e in turn_ends[b] if e >= 0]
            chunks, start = [], 0
            for end in ends:
                turn = tokens[b, end - memory_frames(end - start, self.config.max_turn_frames) : end]
                chunks.append(turn[select_indices(turn.detach(), self.config.sampling, self.config.sampling_ratio)])
                start = end
            out.append(torch.cat(chunks) if chunks else tokens.new_zeros(0, tokens.shape[-1]))
        return out

    def merge_video_tokens(self, input_ids: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings with `video_tokens` [N, D] scattered into the N placeholder positions."""
        embeds = self.language_model.get_input_embeddings()(input_ids)  # [B, S, D]
        mask = input_ids == self.config.video_token_id
        n_slots, n_tokens = int(mask.sum()), video_tokens.shape[0]
        if n_slots != n_tokens:
            raise ValueError(
                f"the prompt has {n_slots} video placeholder tokens but {n_tokens} perception tokens were "
                "selected for them; the processor and the model disagree on frames per turn"
            )
        return embeds.masked_scatter(mask[..., None], video_tokens.to(embeds.dtype))

    # ---- forward --------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        turn_ends: torch.Tensor | None = None,
        gate_labels: torch.Tensor | None = None,
        gate_prompt_ids: torch.Tensor | None = None,
        gate_prompt_mask: torch.Tensor | None = None,
        gate_segment_sample: torch.Tensor | None = None,
        gate_segment_frames: torch.Tensor | None = None,
        gate_loss_config: GateLossConfig | None = None,
    ) -> StreamMindOutput:
        """Stage-1 language loss (when `labels`) and stage-2 gate loss (when `gate_labels`).

        The gate runs when the batch holds its segment layout (`gate_segment_sample`,
        `gate_segment_frames`, from `StreamCollator`); its loss follows `gate_loss_config`
        (default: the paper's class-weighted cross-entropy).

        No **kwargs on purpose: the Trainer then averages losses over gradient-accumulation
        steps itself (both losses are per-batch means), and a misspelled batch key fails.
        """
        tokens = self.get_perception_tokens(pixel_values, frame_features)  # [B, T, D]
        out = StreamMindOutput(perception_tokens=tokens)
        losses = []

        if input_ids is not None:
            if turn_ends is None:
                raise ValueError("input_ids need turn_ends (the frame range of each turn)")
            video_tokens = torch.cat(self.select_turn_tokens(tokens, turn_ends))
            embeds = self.merge_video_tokens(input_ids, video_tokens)
            lm = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)
            out.logits, out.lm_loss = lm.logits, lm.loss
            if lm.loss is not None:
                losses.append(lm.loss)

        if gate_labels is not None and gate_segment_frames is None:
            raise ValueError("gate_labels need the gate's segment layout (gate_segment_sample, gate_segment_frames): "
                             "batch the examples with StreamCollator")
        if gate_segment_frames is not None:
            layout = GateLayout(sample=gate_segment_sample, frames=gate_segment_frames)
            prompt_ids = None if self.config.gate_mode == "per_frame" else gate_prompt_ids
            out.gate_logits = self.gate.frame_logits(tokens, layout, prompt_ids, gate_prompt_mask)
            if gate_labels is not None:
                out.gate_loss = gate_loss(out.gate_logits, gate_labels, gate_loss_config or GateLossConfig())
                losses.append(out.gate_loss)

        if losses:
            out.loss = torch.stack(losses).sum()
        return out

    def gate_logits(
        self,
        tokens: torch.Tensor,
        frame_mask: torch.Tensor,
        gate_labels: torch.Tensor | None,
        gate_prompt_ids: torch.Tensor | None,
        gate_prompt_mask: torch.Tensor | None = None,
        respond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-frame gate logits [B, T, 2] outside training (evaluation, tests, benchmarks); the
        turn resets after frames labelled respond (teacher forcing) or after the frames in
        `respond` [B, T] bool when given. The segments are laid out here (`gate_layout`)."""
        B, T, _ = tokens.shape
        if respond is None:
            respond = gate_labels == 1 if gate_labels is not None else torch.zeros(B, T, dtype=torch.bool)
        layout = gate_layout(frame_mask, respond, self.config.gate_context_window).to(tokens.device)
        prompt_ids = None if self.config.gate_mode == "per_frame" else gate_prompt_ids
        return self.gate.frame_logits(tokens, layout, prompt_ids, gate_prompt_mask)


__all__ = ["StreamMindForCausalLM", "StreamMindPreTrainedModel", "StreamMindOutput"]
