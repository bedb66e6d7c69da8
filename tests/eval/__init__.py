"""Tests for the evaluation package (`eval/`)."""
