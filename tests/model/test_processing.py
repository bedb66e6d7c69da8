"""Prompt rendering, <video> expansion, label masking and frame preprocessing.

Run: .venv/bin/python -m pytest tests/model/test_processing.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammind import StreamMindConfig
from streammind.processing import IGNORE_INDEX, ChatTurn, StreamMindProcessor, add_video_token, render_text
from streammind.sampling import num_selected, select_indices
from streammind.vision import FrameProcessor

GOLDEN = (
    "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nTell me when a shape appears.<video><video>\n [/INST] A red circle appeared.</s>"
    "[INST] <video>\n [/INST] The blue square disappeared.</s>"
    "[INST] Tell me when something turns red.<video>\n [/INST]"
)

TURNS = [
    ChatTurn(2, user="Tell me when a shape appears.", reply="A red circle appeared."),
    ChatTurn(1, reply="The blue square disappeared."),
    ChatTurn(1, user="Tell me when something turns red."),
]


def _processor(tokenizer, **overrides):
    config = StreamMindConfig.from_preset("tiny", system_prompt="SYS", **overrides)
    config.video_token_id = add_video_token(tokenizer)
    return StreamMindProcessor(tokenizer, config)


def test_golden_string():
    assert render_text(TURNS, "SYS") == GOLDEN


def test_ids_decode_to_the_golden_string_and_only_replies_are_labelled(tiny_tokenizer):
    proc = _processor(tiny_tokenizer)
    ids, labels = proc.encode_conversation(TURNS)
    assert len(ids) == len(labels)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == GOLDEN
    assert ids.count(proc.video_token_id) == 4
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert all(lab in (t, IGNORE_INDEX) for t, lab in zip(ids, labels))
    assert tiny_tokenizer.decode(supervised, skip_special_tokens=False) == " A red circle appeared.</s> The blue square disappeared.</s>"
    assert proc.video_token_id not in supervised


def test_turn_pieces_concatenate_to_the_conversation(tiny_tokenizer):
    """The streaming runtime appends per-turn ids; they must equal the training ids."""
    proc = _processor(tiny_tokenizer)
    ids, _ = proc.encode_conversation(TURNS)
    pieces = []
    for i, turn in enumerate(TURNS):
        pieces += proc.encode_turn_prefix(turn.user, turn.num_frames, first=i == 0)
        if turn.reply is not None:
            pieces += proc.encode_reply(turn.reply)
    assert pieces == ids


def test_gate_prompt_is_the_first_turn_opening(tiny_tokenizer):
    proc = _processor(tiny_tokenizer)
    prompt = proc.encode_gate_prompt("Tell me when a shape appears.")
    first = proc.encode_turn_prefix("Tell me when a shape appears.", 0, first=True)
    assert first[: len(prompt)] == prompt
    assert _processor(tiny_tokenizer, gate_mode="per_frame").encode_gate_prompt("x") == []


def test_processor_rejects_a_tokenizer_without_the_placeholder(tiny_tokenizer):
    config = StreamMindConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="<video>"):
        StreamMindProcessor(tiny_tokenizer, config)


def test_placeholders_follow_memory_bound_and_sampling(tiny_tokenizer):
    proc = _processor(tiny_tokenizer, sampling="similarity", sampling_ratio=0.3, max_turn_frames=20)
    assert [proc.placeholders_for(n) for n in (1, 3, 10, 20, 50)] == [1, 1, 3, 6, 6]
    assert num_selected(7, "all", 0.3) == 7


def test_similarity_sampling_keeps_newest_and_most_similar_in_time_order():
    newest = torch.tensor([1.0, 0.0])
    tokens = torch.stack([newest, torch.tensor([0.0, 1.0]), torch.tensor([0.9, 0.1]), torch.tensor([-1.0, 0.0]), newest * 2])
    assert select_indices(tokens, "similarity", 0.6).tolist() == [0, 2, 4]
    assert select_indices(tokens, "uniform", 0.6).tolist() == [0, 2, 4]
    assert select_indices(tokens, "uniform", 0.2).tolist() == [4]


def test_frame_processor_pads_with_the_mean_colour_and_normalises():
    proc = FrameProcessor(8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), mode="pad")
    frame = np.full((4, 8, 3), 255, dtype=np.uint8)  # a wide white frame
    out = proc(frame)
    assert out.shape == (1, 3, 8, 8)
    # Rows 0-1 and 6-7 are padding of colour round(0.5 * 255) = 128 -> (128/255 - 0.5) / 0.25.
    pad_value = (128 / 255 - 0.5) / 0.25
    assert torch.allclose(out[0, :, 0], torch.full((3, 8), pad_value), atol=1e-5)
    assert torch.allclose(out[0, :, 3], torch.full((3, 8), 2.0), atol=1e-5)


def test_frame_processor_equals_a_plain_float_pipeline_bit_for_bit():
    """Padding happens on the uint8 frame for speed; the values must be those of padding the float
    frame with torch.full (the fill is whole numbers): the features the tiny tower was trained on."""
    import torch.nn.functional as F

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    proc = FrameProcessor(32, mean=mean, std=std, mode="pad")
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 36, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [2, 3, 36, 64]
    canvas = torch.stack([torch.full((64, 64), float(round(m * 255))) for m in mean])[None].repeat(2, 1, 1, 1)
    canvas[:, :, 14:50] = x  # centred: (64 - 36) // 2 = 14 rows above
    y = F.interpolate(canvas, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 255) / 255
    expected = (y - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(proc(frames), expected)


def test_frame_processor_crop_mode_and_input_checks():
    proc = FrameProcessor(16, mean=(0, 0, 0), std=(1, 1, 1), mode="crop")
    frame = np.zeros((32, 64, 3), dtype=np.uint8)
    frame[:, 16:48] = 255  # the centre square is white
    out = proc(frame)
    assert out.shape == (1, 3, 16, 16)
    # The crop keeps only the white centre (its outermost columns blend with the black
    # border through the resize kernel).
    assert torch.allclose(out[..., 1:-1], torch.ones_like(out[..., 1:-1]), atol=1e-3)
    assert out[..., [0, -1]].min() > 0.9
    with pytest.raises(ValueError, match="uint8"):
        proc(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="RGB"):
        proc(np.zeros((4, 4), dtype=np.uint8))


def test_gate_prompt_by_value(tiny_tokenizer):
    proc = _processor(tiny_tokenizer)
    prompt = proc.encode_gate_prompt("Tell me when a shape appears.")
    assert tiny_tokenizer.decode(prompt) == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nTell me when a shape appears."
    assert tiny_tokenizer.decode(proc.encode_gate_prompt(None)) == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\n"


def test_processor_render_text_is_what_the_ids_decode_to(tiny_tokenizer):
    proc = _processor(tiny_tokenizer)
    ids, _ = proc.encode_conversation(TURNS)
    assert proc.render_text(TURNS) == GOLDEN == tiny_tokenizer.decode(ids)
    custom = _processor(tiny_tokenizer, video_token="<video>")
    assert custom.render_text(TURNS[:1]).count("<video>") == 2


def test_a_tokenizer_that_adds_bos_itself_still_gives_one_bos(tiny_tokenizer):
    """Mistral's and Llama's tokenizers prepend BOS on encode; the renderer inserts special ids
    itself, so the ids must hold exactly one BOS whatever the tokenizer's template."""
    from tokenizers.processors import TemplateProcessing

    bos = tiny_tokenizer.bos_token_id
    tiny_tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tiny_tokenizer.encode("hello")[0] == bos  # the template works
    proc = _processor(tiny_tokenizer)
    ids, _ = proc.encode_conversation(TURNS)
    assert ids.count(bos) == 1 and ids[0] == bos
    assert tiny_tokenizer.decode(ids) == GOLDEN


def test_decode_drops_special_tokens_and_spaces(tiny_tokenizer):
    proc = _processor(tiny_tokenizer)
    ids = [proc.bos_token_id, *proc.encode_reply("A red circle."), proc.video_token_id, proc.pad_token_id]
    assert proc.decode(ids) == "A red circle."


def test_video_token_is_added_once_as_a_special_token(tiny_tokenizer):
    first = add_video_token(tiny_tokenizer)
    assert add_video_token(tiny_tokenizer) == first and len(tiny_tokenizer) == first + 1
    # Never split, and dropped by decode(skip_special_tokens=True), so replies never show it.
    ids = tiny_tokenizer.encode("red<video>blue", add_special_tokens=False)
    assert ids.count(first) == 1
    assert "<video>" not in tiny_tokenizer.decode(ids, skip_special_tokens=True)


def test_processor_checks_its_tokenizer_and_config(tiny_tokenizer):
    config = StreamMindConfig.from_preset("tiny")
    video_id = add_video_token(tiny_tokenizer)
    assert config.video_token_id is None
    assert StreamMindProcessor(tiny_tokenizer, config).video_token_id == video_id  # an unset id is not checked
    config.video_token_id = video_id + 1
    with pytest.raises(ValueError, match=rf"video_token_id is {video_id + 1} but the tokenizer maps '<video>' to {video_id}"):
        StreamMindProcessor(tiny_tokenizer, config)
    config.video_token_id = video_id
    assert StreamMindProcessor(tiny_tokenizer, config).pad_token_id == tiny_tokenizer.pad_token_id
    tiny_tokenizer.pad_token = None
    assert StreamMindProcessor(tiny_tokenizer, config).pad_token_id == tiny_tokenizer.eos_token_id  # no pad: EOS pads
    tiny_tokenizer.bos_token = None
    with pytest.raises(ValueError, match="BOS and EOS"):
        StreamMindProcessor(tiny_tokenizer, config)


def test_save_and_load_give_the_same_ids(tiny_tokenizer, tmp_path):
    proc = _processor(tiny_tokenizer)
    proc.save_pretrained(tmp_path)
    proc.config.save_pretrained(tmp_path)
    for loaded in (StreamMindProcessor.from_pretrained(tmp_path), StreamMindProcessor.from_pretrained(tmp_path, config=proc.config)):
        assert loaded.encode_conversation(TURNS) == proc.encode_conversation(TURNS)
        assert loaded.video_token_id == proc.video_token_id and loaded.config.system_prompt == "SYS"


def test_render_text_uses_the_tokenizer_s_own_eos(tiny_tokenizer):
    tiny_tokenizer.eos_token = "<unk>"  # a tokenizer whose EOS is not "</s>"
    proc = _processor(tiny_tokenizer)
    ids, _ = proc.encode_conversation(TURNS)
    assert proc.render_text(TURNS) == tiny_tokenizer.decode(ids) and proc.render_text(TURNS).count("<unk>") == 2


def test_from_pretrained_prefers_the_given_config(tiny_tokenizer, tmp_path):
    proc = _processor(tiny_tokenizer)
    proc.save_pretrained(tmp_path)
    proc.config.save_pretrained(tmp_path)
    other = StreamMindConfig.from_preset("tiny", system_prompt="OTHER")
    other.video_token_id = proc.video_token_id
    loaded = StreamMindProcessor.from_pretrained(tmp_path, config=other)
    assert loaded.config.system_prompt == "OTHER"
    assert "OTHER" in tiny_tokenizer.decode(loaded.encode_gate_prompt("q"))


def test_preprocess_frames_is_the_config_s_frame_processor_on_the_given_device(tiny_tokenizer):
    """`preprocess_frames` gives exactly what the config's `FrameProcessor` gives (size, mean,
    std, mode), computed where the caller says: on "meta" the result is a meta tensor of the
    same shape, not a CPU one."""
    proc = _processor(tiny_tokenizer)
    S = proc.config.vision_config.image_size
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 20, 28, 3), dtype=np.uint8)
    expected = FrameProcessor(S, proc.config.image_mean, proc.config.image_std, proc.config.image_preprocess)(frames)
    assert torch.equal(proc.preprocess_frames(frames), expected)
    assert proc.preprocess_frames(frames, device="cpu").device.type == "cpu"
    on_meta = proc.preprocess_frames(frames, device="meta")
    assert on_meta.device.type == "meta" and on_meta.shape == (3, 3, S, S) and on_meta.dtype == torch.float32
