"""Compatibility with the host, torchreid 0.2.5, and its process: its gaps fixed (fixes.py), its
false import-time warning silenced (silenced.py), glibc told to keep freed memory (allocator.py)."""
