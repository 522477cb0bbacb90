"""Datasets shipped with the plugin suite."""
from plugins.data.datasets import synthreid
from plugins.data.datasets.synthreid import SynthReID, prepare, register

__all__ = ['synthreid', 'SynthReID', 'prepare', 'register']
