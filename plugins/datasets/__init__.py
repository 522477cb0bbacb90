"""Datasets shipped with the plugin suite."""
from . import synthreid
from .synthreid import SynthReID, configure, register

__all__ = ['synthreid', 'SynthReID', 'configure', 'register']
