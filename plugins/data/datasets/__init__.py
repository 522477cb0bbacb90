"""Datasets shipped with the plugin suite."""
from plugins.data.datasets import synthreid
from plugins.data.datasets.synthreid import SynthReID, configure, register

__all__ = ['synthreid', 'SynthReID', 'configure', 'register']
