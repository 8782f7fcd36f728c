"""Tests of sail_vision.extraction (a package so that test modules can share image_factory)."""
