"""reid-plugins: one small API through which projects extend torchreid.

Importing this package fixes known host gaps (:mod:`plugins.host.fixes`),
registers the embedded ``synthreid`` dataset, and loads every installed
project (:func:`load_projects`). Extension points, each a
:class:`~plugins.registry.Registry`:

* models: :func:`register_model` / :func:`register_models` (visible to
  ``torchreid.models.build_model``)
* samplers: :func:`register_sampler` (visible to ``ImageDataManager(train_sampler=...)``)
* engines: :func:`register_engine`; hooks: :func:`register_hook`
* config nodes: :func:`register_config`
"""
from plugins.host import silenced as host_warnings  # noqa: F401  (first: before torchreid is imported)
from plugins.config import CONFIG_NODES, get_default_config, merge_from_file, register_config
from plugins.discovery import load_projects
from plugins.training.engine import ENGINES, LossTerm, PluginEngine, build_engine, register_engine
from plugins.evaluation.protocol import evaluate_rank
from plugins.training.hooks import (HOOKS, AdversarialStepHook, CriticUpdateHook, Hook,
                    TeacherDistillationHook, register_hook)
from plugins.host.fixes import install_host_fixes
from plugins.nn.models import MODELS, available_models, build_model, register_model, register_models
from plugins.registry import Registry
from plugins.data.samplers import SAMPLERS, register_sampler, set_sampler_options
from plugins.training.schedulers import build_lr_scheduler

__all__ = [
    'AdversarialStepHook', 'CONFIG_NODES', 'CriticUpdateHook', 'ENGINES', 'HOOKS', 'Hook', 'LossTerm',
    'MODELS', 'PluginEngine', 'Registry', 'SAMPLERS', 'TeacherDistillationHook', 'available_models',
    'build_engine', 'build_lr_scheduler', 'build_model', 'evaluate_rank', 'get_default_config', 'install_host_fixes',
    'load_projects', 'merge_from_file', 'register_config', 'register_engine', 'register_hook',
    'register_model', 'register_models', 'register_sampler', 'set_sampler_options',
]

install_host_fixes()
load_projects()
