"""Method projects. Each sub-package registers itself through ``plugins`` and is
listed in setup.py's ``torchreid_plugins`` entry points; no project imports another."""
