"""Silences torchreid's import-time warning that its Cython evaluation is missing.

The warning is false here: the engine's ranking is :func:`plugins.evaluation.protocol.evaluate_rank`
(vectorised, installed by :func:`plugins.host.fixes.install_host_fixes`), not the host's
Python fallback. Only that message is silenced. It takes effect where ``plugins`` is
imported before torchreid; ``tools/train.py`` prints which evaluation runs.
"""
import warnings

HOST_CYTHON_WARNING = r'Cython evaluation \(very fast so highly recommended\) is unavailable'
warnings.filterwarnings('ignore', message=HOST_CYTHON_WARNING, category=UserWarning)
