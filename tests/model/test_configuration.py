"""StreamMindConfig: presets, validation errors, derived sizes, JSON round trip.

Run: .venv/bin/python -m pytest tests/model/test_configuration.py -q
"""

from __future__ import annotations

import json
import logging

import pytest

from streammind import StreamMindConfig


def test_presets_have_the_documented_sizes():
    real = StreamMindConfig.from_preset("streammind-7b")
    assert (real.vision_config.image_size, real.vision_config.patch_size, real.vision_config.num_hidden_layers) == (336, 14, 24)
    assert real.hidden_size == real.gate_config.hidden_size == 4096
    assert real.gate_config.num_hidden_layers == 4 and real.dt_rank == 256
    assert real.num_vision_layers_to_run == 23 and real.frame_pooling == "mean"
    tiny = StreamMindConfig.from_preset("tiny")
    assert tiny.gate_config.hidden_size == tiny.hidden_size


def test_unknown_and_inconsistent_settings_raise():
    with pytest.raises(ValueError, match="Unknown StreamMindConfig field 'gate_treshold'"):
        StreamMindConfig.from_preset("tiny", gate_treshold=0.3)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['gate_treshold'\]"):
        StreamMindConfig(gate_treshold=0.3)
    with pytest.raises(ValueError, match="sampling must be one of"):
        StreamMindConfig.from_preset("tiny", sampling="random")
    with pytest.raises(ValueError, match="gate width 64 != LLM width 128"):
        StreamMindConfig.from_preset("tiny", gate_config={"model_type": "mistral", "hidden_size": 64, "num_attention_heads": 4,
                                                          "num_key_value_heads": 2})
    with pytest.raises(ValueError, match="sampling_ratio"):
        StreamMindConfig.from_preset("tiny", sampling_ratio=0.0)
    with pytest.raises(ValueError, match="Unknown preset"):
        StreamMindConfig.from_preset("huge")


def test_config_round_trip(tmp_path):
    config = StreamMindConfig.from_preset("tiny", gate_mode="per_frame", sampling="uniform", sampling_ratio=0.25)
    config.save_pretrained(tmp_path)
    again = StreamMindConfig.from_pretrained(tmp_path)
    assert (again.gate_mode, again.sampling, again.sampling_ratio) == ("per_frame", "uniform", 0.25)
    assert again.gate_config.num_hidden_layers == config.gate_config.num_hidden_layers
    assert again.text_config.hidden_size == config.text_config.hidden_size


def test_old_config_with_training_settings_loads_with_a_note(tmp_path, caplog):
    """config.json of a checkpoint from before the gate loss became a training setting."""
    StreamMindConfig.from_preset("tiny").save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.update(gate_loss="focal", gate_class_weights=[0.3, 0.7], gate_focal_gamma=1.5)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING, logger="streammind.configuration"):
        config = StreamMindConfig.from_pretrained(tmp_path)
    notes = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(notes) == 1 and "gate_class_weights, gate_focal_gamma, gate_loss" in notes[0]
    assert not hasattr(config, "gate_loss") and "gate_loss" not in config.to_dict()
    with pytest.raises(ValueError, match="gate_loss is a training setting"):
        StreamMindConfig.from_preset("tiny", gate_loss="focal")
