"""The embedded synthetic streaming world (`world`) and the CLIP-style pretraining of the tiny
preset's vision tower on it (`tower_pretrain`)."""
