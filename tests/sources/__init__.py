"""Tests of sail_vision.sources."""
