"""StreamMind configuration: one HF composite config for the whole model.

`StreamMindConfig` follows the shape of transformers' `LlavaConfig`: sub-configs for the
vision tower (`vision_config`, a CLIP vision config), the language model (`text_config`,
any causal-LM config) and the cognition gate (`gate_config`, a Mistral config whose width
equals the LLM's), plus flat fields for the glue between them (frame pooling, the EPFE
state-space sizes, the gate, similarity sampling and the prompt).

Everything needed to rebuild the model is here and is saved next to every checkpoint, so
loading never depends on a directory name or a command-line flag. Run parameters (learning
rate, data paths, ...) are not here; they live in the training dataclasses.

Two presets (`StreamMindConfig.from_preset`):
- "streammind-7b": the paper's sizes (CLIP ViT-L/14-336, Mistral-7B, 4-layer gate).
- "tiny": the same code at toy sizes, seconds on a CPU (tests, the synthetic world).

Reference: docs/design.md §2; Ding et al., "StreamMind", ICCV 2025 (arXiv 2503.06220).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# CLIP's normalisation constants (OpenAI CLIP, also used by VideoLLaMA2's tower).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_SYSTEM_PROMPT = (
    "You are StreamMind, an assistant that watches a live video stream and speaks only when "
    "something relevant to the user's request happens."
)

logger = logging.getLogger(__name__)

# Training settings that older checkpoints saved in config.json. They are read and ignored
# (with a note): the gate loss is a run setting now (`training.arguments`, saved as
# run_config.yaml), so a stage-2 run chooses its own loss whatever checkpoint it starts from.
TRAINING_ONLY_KEYS = ("gate_loss", "gate_class_weights", "gate_focal_gamma")

# Keys the base PreTrainedConfig consumes or that transformers writes into config.json.
# Anything else that reaches __post_init__ as an unknown keyword is a typo and raises.
_HF_EXTRA_KEYS = {
    "transformers_version",
    "torch_dtype",
    "name_or_path",
    "_name_or_path",
    "_commit_hash",
    "attn_implementation",
    "output_attentions",
    "experts_implementation",
    "num_labels",
    "model_type",
    "use_cache",
    "_attn_implementation_internal",
    "_experts_implementation_internal",
}

_CLIP_L336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)

_MISTRAL_7B = dict(
    model_type="mistral",
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    sliding_window=None,
    bos_token_id=1,
    eos_token_id=2,
)

_TINY_VISION = dict(
    model_type="clip_vision_model",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=32,
)

_TINY_TEXT = dict(
    model_type="mistral",
    vocab_size=512,
    # 128 wide: at 64 the LLM takes several times longer to start reading the frame tokens.
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    sliding_window=None,
    bos_token_id=1,
    eos_token_id=2,
)

_CHOICES = {
    "frame_pooling": ("mean", "max", "cls"),
    "image_preprocess": ("pad", "crop"),
    "gate_mode": ("query", "per_frame"),
    "sampling": ("similarity", "uniform", "all"),
    "perception_temporal": ("mamba", "none"),
}

# Numeric fields, checked by type before the range checks compare them.
_NUMBERS = {
    **dict.fromkeys(("frames_per_second", "gate_threshold", "sampling_ratio"), float),
    **dict.fromkeys(("vision_feature_layer", "perception_d_state", "perception_d_conv", "perception_expand", "perception_dt_rank",
                     "gate_num_layers", "gate_window", "max_turn_frames", "max_reply_tokens", "max_context_tokens"), int),
}

PRESETS: dict[str, dict[str, Any]] = {
    "streammind-7b": dict(vision_config=_CLIP_L336, text_config=_MISTRAL_7B, gate_num_layers=4),
    "tiny": dict(
        vision_config=_TINY_VISION,
        text_config=_TINY_TEXT,
        # Spatial mean pooling as in the paper; the tower is pretrained on the synthetic world
        # with this very pooling (`streammind.synthetic.tower_pretrain`).
        frame_pooling="mean",
        gate_num_layers=2,
        gate_window=256,
        max_turn_frames=128,
        max_context_tokens=2048,
        max_reply_tokens=32,
    ),
}


def gate_config_from_text(text_config: PreTrainedConfig, num_layers: int) -> PreTrainedConfig:
    """A Mistral config of the LLM's width for the gate (so LLM layers can initialise it)."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    return AutoConfig.for_model(
        "mistral",
        vocab_size=text_config.vocab_size,
        hidden_size=text_config.hidden_size,
        intermediate_size=text_config.intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=text_config.num_attention_heads,
        num_key_value_heads=getattr(text_config, "num_key_value_heads", text_config.num_attention_heads),
        head_dim=head_dim,
        rms_norm_eps=getattr(text_config, "rms_norm_eps", 1e-6),
        max_position_embeddings=text_config.max_position_embeddings,
        sliding_window=None,
        tie_word_embeddings=False,
    )


@strict
class StreamMindConfig(PreTrainedConfig):
    r"""Configuration of [`StreamMindForCausalLM`].

    Args:
        vision_config: CLIP vision tower config (`CLIPVisionConfig` or dict).
        text_config: LLM config (any `AutoModelForCausalLM` architecture; Mistral by default).
        gate_config: gate decoder config (Mistral architecture). Built from `text_config` and
            `gate_num_layers` when omitted; its width must equal the LLM's.
        vision_feature_layer: CLIP hidden-state index used as frame features (-2 = penultimate).
            Layers after it are not run.
        frame_pooling: how the P patch tokens of a frame become one vector: "mean" (the paper),
            "max", or "cls" (the CLS token of the selected layer).
        image_preprocess: "pad" (pad to square with the CLIP mean colour, then resize) or "crop"
            (resize the short side, centre crop). Used identically in training and inference.
        image_mean, image_std: per-channel normalisation.
        frames_per_second: target sampling rate of streams, by presentation time.
        perception_d_state, perception_d_conv, perception_expand, perception_dt_rank: the EPFE's
            Mamba-1 block sizes (dt_rank 0 = ceil(D / 16)).
        perception_temporal: "mamba" (the EPFE) or "none" (the ablation without the Mamba
            block: pooled features through the EPFE's linear maps only, no state).
        gate_mode: "query" (the gate reads the prompt with the user query, then one perception
            token per frame, causally) or "per_frame" (the released code's variant: the gate
            sees only the newest perception token).
        gate_num_layers: decoder layers of the gate when `gate_config` is derived.
        gate_threshold: respond when p(respond) > threshold.
        gate_window: the most frames the gate attends to within one turn; after a full window
            the turn's gate context restarts from the prompt (bounded cost; the EPFE state
            still carries the history). See `gate.turn_position`.
        sampling: which perception tokens since the last response reach the LLM:
            "similarity" (top ceil(p*n) by cosine similarity to the newest, time order kept),
            "uniform" (ceil(p*n) evenly spaced, newest kept) or "all".
        sampling_ratio: p above.
        max_turn_frames: bound of the per-turn perception memory (oldest frames dropped first).
        video_token: the placeholder string that marks where frame tokens go.
        video_token_id: its id in the tokenizer (set by the builder).
        system_prompt: system prompt of the `[INST]` template.
        max_reply_tokens: cap on generated reply length.
        max_context_tokens: budget of the LLM conversation cache; older turns are evicted.
    """

    model_type = "streammind"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=_CLIP_L336),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="mistral", init_kwargs=_MISTRAL_7B),
        "gate_config": SubConfigSpec(config_class=AutoConfig, model_type="mistral", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    gate_config: dict | PreTrainedConfig | None = None

    vision_feature_layer: int = -2
    frame_pooling: Literal["mean", "max", "cls"] = "mean"
    image_preprocess: Literal["pad", "crop"] = "pad"
    image_mean: list[float] | tuple[float, ...] = CLIP_MEAN
    image_std: list[float] | tuple[float, ...] = CLIP_STD
    frames_per_second: float = 2.0

    perception_d_state: int = 16
    perception_d_conv: int = 4
    perception_expand: int = 2
    perception_dt_rank: int = 0
    perception_temporal: Literal["mamba", "none"] = "mamba"

    gate_mode: Literal["query", "per_frame"] = "query"
    gate_num_layers: int = 4
    gate_threshold: float = 0.5
    gate_window: int = 600

    sampling: Literal["similarity", "uniform", "all"] = "similarity"
    sampling_ratio: float = 0.5
    max_turn_frames: int = 600

    video_token: str = "<video>"
    video_token_id: int | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_reply_tokens: int = 128
    max_context_tokens: int = 8192
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        legacy = sorted(key for key in TRAINING_ONLY_KEYS if kwargs.pop(key, None) is not None)
        if legacy:
            logger.warning("StreamMindConfig: ignoring %s (a training setting since the gate loss left the model config; "
                           "set it in the stage YAML)", ", ".join(legacy))
        unknown = sorted(set(kwargs) - _HF_EXTRA_KEYS)
        if unknown:
            raise ValueError(f"StreamMindConfig got unknown setting(s) {unknown}; see StreamMindConfig's docstring for the valid ones.")
        super().__post_init__(**kwargs)
        if self.gate_config is None:
            self.gate_config = gate_config_from_text(self.text_config, self.gate_num_layers)
        self.image_mean = [float(x) for x in self.image_mean]
        self.image_std = [float(x) for x in self.image_std]
        self._check()

    def _check(self) -> None:
        """Raise on settings of the wrong type, or individually valid but inconsistent."""
        wrong = [f"{name} must be {kind.__name__ if kind is int else 'a number'}, got {getattr(self, name)!r}"
                 for name, kind in _NUMBERS.items()
                 if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int,) if kind is int else (int, float))]
        if wrong:
            raise ValueError("Inconsistent StreamMindConfig: " + "; ".join(wrong))
        problems = []
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.gate_config.hidden_size != self.text_config.hidden_size:
            problems.append(
                f"gate width {self.gate_config.hidden_size} != LLM width {self.text_config.hidden_size} "
                "(perception tokens are LLM embeddings and feed both)"
            )
        n_layers = self.vision_config.num_hidden_layers
        if not -n_layers - 1 <= self.vision_feature_layer <= n_layers or self.vision_feature_layer == -n_layers - 1:
            problems.append(f"vision_feature_layer {self.vision_feature_layer} is out of range for a {n_layers}-layer tower")
        if not 0.0 < self.sampling_ratio <= 1.0:
            problems.append(f"sampling_ratio must be in (0, 1], got {self.sampling_ratio}")
        if not 0.0 <= self.gate_threshold <= 1.0:
            problems.append(f"gate_threshold must be in [0, 1], got {self.gate_threshold}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            problems.append("image_mean and image_std need 3 values (RGB)")
        for name in ("frames_per_second",):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        for name in ("gate_window", "max_turn_frames", "max_reply_tokens", "max_context_tokens", "perception_d_state", "perception_d_conv", "perception_expand"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("Inconsistent StreamMindConfig: " + "; ".join(problems))

    # ---- derived sizes ------------------------------------------------------------------

    @property
    def vision_dim(self) -> int:
        return self.vision_config.hidden_size

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def gate_context_window(self) -> int:
        """The most frames in one gate context: `gate_window`, or 1 for the per-frame gate (every frame alone)."""
        return 1 if self.gate_mode == "per_frame" else self.gate_window

    @property
    def dt_rank(self) -> int:
        return self.perception_dt_rank or math.ceil(self.text_config.hidden_size / 16)

    @property
    def num_vision_layers_to_run(self) -> int:
        """CLIP layers needed for `vision_feature_layer` (hidden_states[i] is the output of i layers)."""
        n = self.vision_config.num_hidden_layers
        return self.vision_feature_layer if self.vision_feature_layer >= 0 else n + 1 + self.vision_feature_layer

    # ---- presets --------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> StreamMindConfig:
        """Build a preset ("tiny", "streammind-7b"); `overrides` replace top-level fields.

        Sub-config overrides are dicts merged into the preset's (e.g.
        `text_config={"vocab_size": 400}`).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
        valid = set(cls.__dataclass_fields__)
        for key, value in overrides.items():
            if key in TRAINING_ONLY_KEYS:
                raise ValueError(f"{key} is a training setting, not a StreamMindConfig field: set it in the stage YAML (preset {name!r})")
            if key not in valid:
                raise ValueError(f"Unknown StreamMindConfig field {key!r} (preset {name!r})")
            if key in ("vision_config", "text_config", "gate_config") and isinstance(value, dict):
                fields[key] = {**fields.get(key, {}), **value}
            else:
                fields[key] = value
        return cls(**fields)


__all__ = ["StreamMindConfig", "PRESETS", "CLIP_MEAN", "CLIP_STD", "DEFAULT_SYSTEM_PROMPT", "gate_config_from_text"]
