"""Measurement: benchmark sections, timing helpers and the checks against official code."""
