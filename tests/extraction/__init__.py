"""Tests of sail_vision.extraction ."""
