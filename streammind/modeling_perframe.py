"""The per-frame-LLM baseline: VideoLLM-online's design, built from StreamMind's parts.

The paradigm StreamMind argues against: every frame's visual tokens go through the LLM,
which decides at every frame whether to stay silent or to speak (Chen et al., "VideoLLM-online",
CVPR 2024; the v1+ variant). It shares the vision tower, the LLM architecture, the tokenizer,
the prompt template and the training annotations with StreamMind, so the comparison isolates
the paradigm.

Notation: B videos, T frames, F = 1 + G^2 visual tokens per frame (G = 3: 10 tokens), Dv
vision width, D LLM width, S tokens of a sequence.

    frames --CLIP (layer -2): CLS + the patch grid average-pooled to G x G--> [B, T, F, Dv]
        --projector (Linear, GELU, Linear: VideoLLM-online's connector)--> [B, T, F, D]
        --mask-scatter into F `<video>` placeholders per frame--> the LLM

Token layout (our `[INST]` template; VideoLLM-online's "," interval token and "]\\n"
stream close play the same roles):

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{query}<v>x10,<v>x10,...,<v>x10\\n [/INST] {reply}</s>
    [INST] <v>x10,<v>x10,...<v>x10\\n [/INST] {reply}</s>[INST] <v>x10,...

The *streaming EOS* objective: the last `<v>` of every frame is trained to predict either the
frame separator "," (stay silent, keep watching) or the first token of the turn close "\\n"
(speak); the close, the reply and its EOS are supervised as language (VideoLLM-online also
supervises its "Assistant:" header). The loss is VideoLLM-online's: token cross-entropy, the
positions whose *input* is a `<v>` (the frame decisions) weighted by `stream_loss_weight`,
the sum divided by the number of supervised tokens (`stream_lm_loss`).

The decision: p(respond) = 1 - p(",") at the frame's last `<v>`; the model speaks when
p(respond) > `respond_threshold`. VideoLLM-online speaks when p(",") < theta or the argmax is
not ","; for theta >= 0.5 that is p(",") < theta, i.e. our rule with threshold 1 - theta (the
two coincide at 0.5, the default here).

Differences from VideoLLM-online, on purpose: the template is StreamMind's `[INST]` one and
the query comes before the first frame (VideoLLM-online puts one unlearned frame first); the
LLM is trained in full (VideoLLM-online trains a LoRA on an 8B LLM; at toy scale both
models train their LLM in full). Streaming inference with a KV cache: `streammind.streaming_perframe`.

Reference: VideoLLM-online's `models/modeling_live.py` and `models/vision_live.py`
(github.com/showlab/videollm-online): token layout, objective and loss, the CLS + 3x3 pooled
tokens and the connector, the decision rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from .configuration import _HF_EXTRA_KEYS, CLIP_MEAN, CLIP_STD, DEFAULT_SYSTEM_PROMPT, PRESETS
from .fileio import atomic_directory
from .modeling_streammind import StreamMindForCausalLM
from .processing import _TURN_CLOSE, IGNORE_INDEX, ChatTurn, StreamMindProcessor, _turn_prefix_text, add_video_token
from .vision import VisionEncoder, grid_size

PER_FRAME_MODEL_TYPE = "streammind_per_frame_llm"

# The baseline's presets share the vision tower and LLM sizes of StreamMind's.
PER_FRAME_PRESETS: dict[str, dict[str, Any]] = {
    "perframe-tiny": dict(
        vision_config=PRESETS["tiny"]["vision_config"],
        text_config=PRESETS["tiny"]["text_config"],
        max_context_tokens=4096,
        max_reply_tokens=32,
    ),
    "perframe-7b": dict(vision_config=PRESETS["streammind-7b"]["vision_config"], text_config=PRESETS["streammind-7b"]["text_config"]),
}


@strict
class PerFrameLLMConfig(PreTrainedConfig):
    r"""Configuration of [`PerFrameLLM`] (VideoLLM-online's design).

    Args:
        vision_config: CLIP vision tower config.
        text_config: LLM config (any `AutoModelForCausalLM` architecture).
        vision_feature_layer: CLIP hidden-state index used as frame features (-2 = penultimate).
        frame_pooling: "cls+GxG": the CLS token and the patch grid average-pooled to G x G
            (VideoLLM-online v1+: "cls+3x3", 10 tokens per frame).
        image_preprocess, image_mean, image_std: frame preprocessing (as StreamMind's).
        frames_per_second: target sampling rate of streams.
        stream_loss_weight: weight of the frame-decision positions in the loss (VideoLLM-online: 1.0).
        frame_separator: the token between frames, the "stay silent" target (one token).
        respond_threshold: speak when p(respond) = 1 - p(separator) > threshold.
        video_token, video_token_id: the visual placeholder (id set by the builder).
        system_prompt: system prompt of the `[INST]` template.
        max_reply_tokens: cap on generated reply length.
        max_context_tokens: the KV cache's length; a stream that fills it restarts from the
            prompt (VideoLLM-online has no such bound and degrades past its LLM's context).
    """

    model_type = PER_FRAME_MODEL_TYPE
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=PER_FRAME_PRESETS["perframe-7b"]["vision_config"]),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="mistral", init_kwargs=PER_FRAME_PRESETS["perframe-7b"]["text_config"]),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -2
    frame_pooling: str = "cls+3x3"
    image_preprocess: str = "pad"
    image_mean: list[float] | tuple[float, ...] = CLIP_MEAN
    image_std: list[float] | tuple[float, ...] = CLIP_STD
    frames_per_second: float = 2.0
    stream_loss_weight: float = 1.0
    frame_separator: str = ","
    respond_threshold: float = 0.5
    video_token: str = "<video>"
    video_token_id: int | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_reply_tokens: int = 128
    max_context_tokens: int = 8192
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - _HF_EXTRA_KEYS)
        if unknown:
            raise ValueError(f"PerFrameLLMConfig got unknown setting(s) {unknown}; see its docstring for the valid ones.")
        super().__post_init__(**kwargs)
        self.image_mean = [float(x) for x in self.image_mean]
        self.image_std = [float(x) for x in self.image_std]
        problems = []
        try:
            if grid_size(self.frame_pooling) is None:
                problems.append(f"frame_pooling must be 'cls+GxG' (e.g. 'cls+3x3'), got {self.frame_pooling!r}")
        except ValueError as exc:
            problems.append(str(exc))
        if self.image_preprocess not in ("pad", "crop"):
            problems.append(f"image_preprocess must be 'pad' or 'crop', got {self.image_preprocess!r}")
        if not self.stream_loss_weight >= 0:
            problems.append(f"stream_loss_weight must be >= 0, got {self.stream_loss_weight}")
        if not 0.0 <= self.respond_threshold <= 1.0:
            problems.append(f"respond_threshold must be in [0, 1], got {self.respond_threshold}")
        if not self.frames_per_second > 0:
            problems.append("frames_per_second must be positive")
        for name in ("max_reply_tokens", "max_context_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("Inconsistent PerFrameLLMConfig: " + "; ".join(problems))

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def tokens_per_frame(self) -> int:
        """F: visual tokens per frame (1 + G^2)."""
        return 1 + grid_size(self.frame_pooling) ** 2

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PerFrameLLMConfig:
        """Build a preset ("perframe-tiny", "perframe-7b"); `overrides` replace top-level fields
        (sub-config dicts are merged into the preset's)."""
        if name not in PER_FRAME_PRESETS:
            raise ValueError(f"Unknown per-frame-LLM preset {name!r}; choose one of {sorted(PER_FRAME_PRESETS)}")
        fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PER_FRAME_PRESETS[name].items()}
        for key, value in overrides.items():
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"Unknown PerFrameLLMConfig field {key!r} (preset {name!r})")
            fields[key] = {**fields.get(key, {}), **value} if key in ("vision_config", "text_config") and isinstance(value, dict) else value
        return cls(**fields)


# ---- the processor --------------------------------------------------------------------------


class PerFrameProcessor(StreamMindProcessor):
    """StreamMind's processor with the interleaved per-frame layout (module docstring).

    `placeholders_for(n)` is n: every frame reaches the LLM (a `ChatTurn.num_frames` counts
    frames here, each rendered as F placeholders), so `StreamDataset` builds the baseline's
    examples unchanged. The baseline has no gate: `encode_gate_prompt` is empty.
    """

    def __init__(self, tokenizer, config: PerFrameLLMConfig):
        super().__init__(tokenizer, config)
        separator = self._encode(config.frame_separator)
        if len(separator) != 1:
            raise ValueError(f"the frame separator {config.frame_separator!r} must be one token of the tokenizer, got {len(separator)}")
        self.separator_id = separator[0]
        self.close_ids = self._encode(_TURN_CLOSE)  # its first token is the "speak" decision
        if self.close_ids[0] == self.separator_id:
            raise ValueError("the frame separator and the first token of the turn close must differ")
        self.tokens_per_frame = config.tokens_per_frame

    def placeholders_for(self, num_frames: int) -> int:
        return num_frames

    def encode_gate_prompt(self, query: str | None) -> list[int]:
        return []

    def encode_prompt(self, query: str | None) -> list[int]:
        """The ids that open a stream: BOS, system prompt and the query (before the first frame)."""
        return [self.bos_token_id] + self._encode(_turn_prefix_text(query, self.config.system_prompt))

    def encode_turn_open(self, user: str | None = None) -> list[int]:
        """The ids that open a later turn, after a reply's EOS ("[INST] " and any user text)."""
        return self._encode(_turn_prefix_text(user, None))

    def encode_conversation(self, turns: list[ChatTurn]) -> tuple[list[int], list[int]]:
        """Interleaved ids and labels. Supervised: the separator after every frame that does
        not speak, and after a turn's last frame the close, the reply and its EOS."""
        ids: list[int] = []
        labels: list[int] = []
        frame = [self.video_token_id] * self.tokens_per_frame
        for i, turn in enumerate(turns):
            prefix = self.encode_prompt(turn.user) if i == 0 else self.encode_turn_open(turn.user)
            ids += prefix
            labels += [IGNORE_INDEX] * len(prefix)
            for f in range(turn.num_frames):
                ids += frame
                labels += [IGNORE_INDEX] * len(frame)
                if f < turn.num_frames - 1:
                    ids.append(self.separator_id)
                    labels.append(self.separator_id)
            if turn.reply is not None:
                spoken = self.close_ids + self.encode_reply(turn.reply)
                ids += spoken
                labels += spoken
        return ids, labels

    def reply_labels(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Labels [S] of the replies and their EOS only: the frame decisions (the separator or the
        close's first token after a frame) and the rest of the close masked out."""
        out = labels.clone()
        decision = torch.zeros_like(labels, dtype=torch.bool)
        decision[1:] = input_ids[:-1] == self.video_token_id
        decision &= input_ids != self.video_token_id  # the token right after a frame's last <video>
        n = len(self.close_ids)
        for p in torch.nonzero(decision & (input_ids == self.close_ids[0])).flatten().tolist():
            out[p : p + n] = IGNORE_INDEX
        out[decision] = IGNORE_INDEX
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, config: PerFrameLLMConfig | None = None) -> PerFrameProcessor:
        config = config if config is not None else PerFrameLLMConfig.from_pretrained(directory)
        return cls(AutoTokenizer.from_pretrained(directory, config=config.text_config), config)


# ---- the model ------------------------------------------------------------------------------


def stream_lm_loss(logits: torch.Tensor, labels: torch.Tensor, frame_inputs: torch.Tensor, stream_loss_weight: float) -> torch.Tensor:
    """VideoLLM-online's loss: weighted next-token cross-entropy, summed, over the supervised count.

    Args:
        logits: [B, S, V]; labels: [B, S] aligned with the ids (IGNORE_INDEX where unsupervised).
        frame_inputs: [B, S] bool, positions whose input is a visual placeholder.
        stream_loss_weight: weight of the predictions made at those positions (the frame decisions).
    Returns:
        sum_i w_i * CE_i / #supervised, with w_i = stream_loss_weight when input i is a placeholder
        and 1 otherwise (position i predicts label i + 1).
    """
    targets = labels[:, 1:]  # [B, S-1]
    ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    weight = torch.where(frame_inputs[:, :-1].flatten(), stream_loss_weight, 1.0)
    return (ce * weight).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)


class Projector(nn.Module):
    """VideoLLM-online's connector, per visual token: [..., Dv] -> Linear, GELU, Linear -> [..., D]."""

    def __init__(self, vision_dim: int, d_model: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, d_model)
        self.fc2 = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


@dataclass
class PerFrameLLMOutput(ModelOutput):
    """Loss and logits of a forward pass."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class PerFrameLLMPreTrainedModel(PreTrainedModel):
    config_class = PerFrameLLMConfig
    config: PerFrameLLMConfig
    base_model_prefix = "per_frame_llm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "MistralDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # CLIP and the LLM initialise themselves; this covers the projector.
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.text_config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)


class PerFrameLLM(PerFrameLLMPreTrainedModel):
    """The baseline: `vision` (shared tower design), `projector`, `language_model`.

    Args:
        config: its config.
        vision: optional pretrained `CLIPVisionModel` to use as the tower.
        language_model: optional pretrained causal LM.
    """

    def __init__(self, config: PerFrameLLMConfig, vision: nn.Module | None = None, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.vision = VisionEncoder(config.vision_config, config.vision_feature_layer, config.frame_pooling, clip=vision)
        self.projector = Projector(config.vision_config.hidden_size, config.hidden_size)
        self.language_model = language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, written atomically (as StreamMind's)."""
        with atomic_directory(save_directory) as tmp:
            super().save_pretrained(tmp, *args, **kwargs)

    # The same mask-and-scatter (with its count check) as StreamMind's: shared, not copied.
    merge_video_tokens = StreamMindForCausalLM.merge_video_tokens

    def get_frame_features(self, pixel_values: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """pixel_values [B, T, 3, H, W] -> CLS + pooled grid features [B, T, F, Dv] (no grad: the tower is frozen)."""
        B, T = pixel_values.shape[:2]
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            feats = self.vision.encode_frames(pixel_values.flatten(0, 1), chunk_size=chunk_size)  # [B*T, F, Dv]
        return feats.view(B, T, *feats.shape[1:])

    def frame_embeddings(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Frame features [..., F, Dv] -> LLM input embeddings [..., F, D]."""
        return self.projector(frame_features.to(self.projector.fc1.weight.dtype))

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        turn_ends: torch.Tensor | None = None,
    ) -> PerFrameLLMOutput:
        """The streaming-EOS loss over interleaved dialogues (when `labels`), and the logits.

        Args:
            pixel_values: [B, T, 3, H, W], or frame_features [B, T, F, Dv] (a feature cache).
            frame_mask: [B, T] bool, real frames (a prefix of each row).
            input_ids, attention_mask, labels: [B, S], rendered by `PerFrameProcessor`.
            turn_ends: accepted because the stream collator provides it; the interleaved
                layout already places every frame, so it is not needed.
        """
        if (pixel_values is None) == (frame_features is None):
            raise ValueError("pass exactly one of pixel_values or frame_features")
        if input_ids is None:
            raise ValueError("the per-frame LLM needs input_ids (the interleaved dialogue)")
        if frame_features is None:
            frame_features = self.get_frame_features(pixel_values)
        B, T = frame_features.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(B, T, dtype=torch.bool, device=frame_features.device)
        visual = self.frame_embeddings(frame_features[frame_mask])  # [N real frames, F, D]
        embeds = self.merge_video_tokens(input_ids, visual.flatten(0, 1))  # [B, S, D]
        logits = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
        loss = None
        if labels is not None:
            loss = stream_lm_loss(logits, labels, input_ids == self.config.video_token_id, self.config.stream_loss_weight)
        return PerFrameLLMOutput(loss=loss, logits=logits)


def build_per_frame_llm(
    config: PerFrameLLMConfig, tokenizer, vision: CLIPVisionModel | None = None
) -> tuple[PerFrameLLM, PerFrameProcessor]:
    """A freshly initialised baseline whose vocabulary and placeholder id match `tokenizer`
    (`vision`: a pretrained tower to use, with `config.vision_config` as its config)."""
    config.video_token_id = add_video_token(tokenizer, config.video_token)
    config.text_config.vocab_size = max(config.text_config.vocab_size, len(tokenizer))
    if vision is not None and vision.config.to_dict() != config.vision_config.to_dict():
        raise ValueError("the pretrained vision tower's config differs from config.vision_config")
    return PerFrameLLM(config, vision=vision), PerFrameProcessor(tokenizer, config)


__all__ = [
    "PER_FRAME_MODEL_TYPE",
    "PER_FRAME_PRESETS",
    "PerFrameLLM",
    "PerFrameLLMConfig",
    "PerFrameLLMOutput",
    "PerFrameProcessor",
    "Projector",
    "build_per_frame_llm",
    "stream_lm_loss",
]
