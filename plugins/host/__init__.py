"""Compatibility with the host, torchreid 0.2.5: its gaps fixed and its false warnings silenced."""
