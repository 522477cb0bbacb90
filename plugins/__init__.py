"""reid-plugins: the public API through which projects extend torchreid.

Projects (ours under ``projects/`` and third-party packages alike) import from ``plugins``
and nothing deeper; this module is the one list of what they may use. Importing it fixes
known host gaps (:mod:`plugins.host`), registers the embedded ``synthreid`` dataset and
loads every installed project (:func:`load_projects`).

The layers below it, each a subpackage:

* :mod:`plugins.registry`: every extension point (models, samplers, engines, config nodes,
  attention maps, appearance swaps, benchmark sections, official checks);
* :mod:`plugins.nn`: neutral building blocks for model code (backbones, heads, criteria,
  Grad-CAM maths, the model factory); it never imports the training loop or drawing code;
* :mod:`plugins.data`: datasets and samplers;
* :mod:`plugins.training`: the engine and its step contract, loss terms, hooks, mixed
  precision, torchrun, checkpoints, resilience and the run launcher;
* :mod:`plugins.evaluation`: distances, rank metrics, flip, query expansion, re-ranking;
* :mod:`plugins.export`, :mod:`plugins.visualization`;
* :mod:`plugins.benchmarking`: measurement helpers, sections and checks against official code.

Names in :data:`_TOOLING` (measurement and official-code helpers a project's benchmark or
check module uses) are imported on first use, so that registering a project stays light.
"""
import importlib

from plugins.host import silenced as _silenced  # noqa: F401  (first: before torchreid is imported)
from plugins.config import get_default_config, lr_scheduler_kwargs, merge_from_file, optimizer_kwargs
from plugins.data.samplers import pair_labels, register_sampler, sampler_choice
from plugins.discovery import load_projects
from plugins.distributed import per_rank_batch
from plugins.evaluation.protocol import evaluate_rank
from plugins.host.fixes import install_host_fixes
from plugins.nn.attention import cam_from_gradients, normalise_maps
from plugins.nn.backbones import ResNetTrunk
from plugins.nn.heads import ReIDHead
from plugins.nn.models import available_models, build_model, model_builder, register_model, register_models
from plugins.nn.modules import batchnorm_stats_frozen, fp32, frozen, logits_of, split_outputs
from plugins.registry import (APPEARANCE_SWAPS, ATTENTION_MAPS, BENCHMARKS, CONFIG_CHECKS, CONFIG_NODES,
                              ENGINES, MODELS, OFFICIAL_CHECKS, SAMPLERS, Registry,
                              register_appearance_swap, register_attention_maps, register_benchmark,
                              register_config, register_engine, register_official_check)
from plugins.training.builders import build_engine, engine_options
from plugins.training.checkpoint import load_weights_strict, save_checkpoint
from plugins.training.engine import NoData, PluginEngine
from plugins.training.hooks import (AdversarialStepHook, CriticUpdateHook, Hook, TeacherDistillationHook,
                                    TrainedNetworkHook)
from plugins.training.schedulers import build_lr_scheduler
from plugins.training.step import Step, model_output
from plugins.training.terms import LossTerm, accuracy, cross_entropy_term, reid_loss_terms, triplet_term

#: name -> module, imported when the name is first asked for (PEP 562).
_TOOLING = {
    'median_time': 'plugins.benchmarking.measure',
    'interleaved_times': 'plugins.benchmarking.measure',
    'time_with_peak_memory': 'plugins.benchmarking.measure',
    'call_in_subprocess': 'plugins.benchmarking.measure',
    'pk_batch': 'plugins.benchmarking.steps',
    'step_engine': 'plugins.benchmarking.steps',
    'Report': 'plugins.benchmarking.official',
    'check_clone': 'plugins.benchmarking.official',
    'compare': 'plugins.benchmarking.official',
    'copy_parameters': 'plugins.benchmarking.official',
    'gradient_rows': 'plugins.benchmarking.official',
    'official_code': 'plugins.benchmarking.official',
    'time_side_by_side': 'plugins.benchmarking.official',
    'setup_config': 'plugins.training.launch',
    'build_model_from_config': 'plugins.training.launch',
}

__all__ = [
    # registries and registration
    'APPEARANCE_SWAPS', 'ATTENTION_MAPS', 'BENCHMARKS', 'CONFIG_CHECKS', 'CONFIG_NODES', 'ENGINES',
    'MODELS', 'OFFICIAL_CHECKS', 'SAMPLERS', 'Registry', 'load_projects', 'register_appearance_swap',
    'register_attention_maps', 'register_benchmark', 'register_config', 'register_engine',
    'register_model', 'register_models', 'register_official_check', 'register_sampler',
    # model building blocks (plugins.nn)
    'ReIDHead', 'ResNetTrunk', 'available_models', 'batchnorm_stats_frozen', 'build_model',
    'cam_from_gradients', 'fp32', 'frozen', 'logits_of', 'model_builder', 'normalise_maps',
    'split_outputs',
    # data
    'pair_labels', 'sampler_choice',
    # training
    'AdversarialStepHook', 'CriticUpdateHook', 'Hook', 'LossTerm', 'NoData', 'PluginEngine', 'Step',
    'TeacherDistillationHook', 'TrainedNetworkHook', 'accuracy', 'build_engine', 'build_lr_scheduler',
    'cross_entropy_term', 'engine_options', 'load_weights_strict', 'model_output', 'per_rank_batch',
    'reid_loss_terms', 'save_checkpoint', 'triplet_term',
    # configuration and evaluation
    'evaluate_rank', 'get_default_config', 'install_host_fixes', 'lr_scheduler_kwargs',
    'merge_from_file', 'optimizer_kwargs',
] + sorted(_TOOLING)


def __getattr__(name):
    if name in _TOOLING:
        return getattr(importlib.import_module(_TOOLING[name]), name)
    raise AttributeError('module {!r} has no attribute {!r}'.format(__name__, name))


install_host_fixes()
load_projects()
