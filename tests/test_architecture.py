"""The architecture holds: projects use the public ``plugins`` API only and never each other,
model code only the neutral building blocks, one registry module, no module-global
configuration, and deleting any one project leaves everything else working.

Each rule is a function over source text (its AST) returning the violations as
``'line N: ...'`` strings; it is run on the repository and, so that it can fail, on a
small bad snippet (the ``*_catches_*`` tests).

Deleting a project: for each project, a copy of the working tree without ``projects/<p>``,
``configs/<p>`` and ``tests/projects/<p>`` gets a ``sitecustomize.py`` that emulates the
re-install (the installed metadata still lists every project's entry point), and a process
in the copy imports ``plugins``, reads the registries, loads every config, runs
``tools/train.py --help`` and collects the test suite (``probe.py``). The processes are
forked from one that imported torch, torchvision and torchreid once (``fork_server.py``),
which keeps the five under a minute on two cores. Each also breaks its copy on purpose
(a test module and a config that use the deleted project) to show that the checks see it.
"""
import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO

ROOT = Path(REPO)
PROJECTS = sorted(p.name for p in (ROOT / 'projects').iterdir() if (p / '__init__.py').is_file())
# the model modules of a project (those that exist are checked)
MODEL_MODULE_FILES = ('model.py', 'networks.py', 'modules.py', 'losses.py')
EXTRA_MODEL_MODULES = {'casn': ('attention.py',)}
# what plugins.nn must never depend on, directly or through other plugin modules
NN_FORBIDDEN = ('plugins.training', 'plugins.visualization', 'plugins.benchmarking',
                'plugins.evaluation', 'cv2', 'PIL')
MODEL_CODE_FORBIDDEN = ('cv2', 'PIL', 'matplotlib')  # drawing has no place in model code
# module-level names that hold configuration set at run time (what globals used to carry)
CONFIG_LIKE_NAME = re.compile(r'^_+(?:[A-Za-z0-9]+_)*(?:OPTIONS?|SEED|DEVICE|SPEC|CONFIG|CFG|SETTINGS?)$',
                              re.IGNORECASE)
MODULE_PATH_STRING = re.compile(r'^(projects|plugins)((?:\.\w+)+)(?::[\w.]+)?$')


# -- walking the sources -------------------------------------------------------------------------

def python_modules(folder):
    """``[(path, module name, is_package)]`` of every ``.py`` file under ``folder`` (a repo folder)."""
    out = []
    for path in sorted((ROOT / folder).rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        is_package = parts[-1] == '__init__'
        if is_package:
            parts = parts[:-1]
        out.append((path, '.'.join(parts), is_package))
    return out


def known_plugin_modules():
    return {name for _, name, _ in python_modules('plugins')}


def _resolve_from(node, module, is_package):
    """The module an ``ImportFrom`` reads from (relative levels resolved); None when it climbs
    above the top-level package."""
    if not node.level:
        return node.module
    package = (module if is_package else module.rpartition('.')[0]).split('.')
    if node.level - 1 >= len(package):
        return None
    base = package[:len(package) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def imports(tree, module, is_package, known=()):
    """``[(line, imported module or None, imported name or None)]`` for every import statement,
    nested ones included. ``from X import a`` gives ``X.a`` when that is a module in ``known``
    (or a relative ``from . import a``), else ``X`` with name ``a``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, module, is_package)
            for alias in node.names:
                if source is not None and (source + '.' + alias.name in known
                                           or (node.level and not node.module)):
                    out.append((node.lineno, source + '.' + alias.name, None))
                else:
                    out.append((node.lineno, source, alias.name))
    return out


def _within(name, package):
    return name == package or name.startswith(package + '.')


def own_package(module):
    """The package a module belongs to: ``projects.<name>`` for our projects, else its
    top-level package (a method installed as its own distribution)."""
    parts = module.split('.')
    return '.'.join(parts[:2]) if parts[0] == 'projects' else parts[0]


def _plugins_aliases(tree):
    """Names bound to the ``plugins`` module by ``import plugins [as x]``."""
    return {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names if alias.name == 'plugins'}


def _plugins_attributes(tree):
    """``[(line, NAME)]`` of every ``plugins.NAME`` read through a name bound by ``import plugins``."""
    aliases = _plugins_aliases(tree)
    return [(node.lineno, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in aliases]


# -- rule 1: projects use the public API only, and never another project ----------------------

def public_api_violations(source, module, is_package, public):
    """Violations of: a project module reaches the plugin layer only as ``import plugins`` /
    ``from plugins import NAME`` / ``plugins.NAME`` with NAME in ``public`` (``plugins.__all__``),
    and never imports (or names, as a ``'module:attribute'`` string) another project or
    anything outside its own package through a relative import."""
    tree = ast.parse(source)
    own = own_package(module)
    found = []
    for line, target, name in imports(tree, module, is_package):
        if target is None:
            found.append('line {}: relative import climbs above the top-level package'.format(line))
        elif target == 'plugins':
            if name == '*' or (name is not None and name not in public):
                found.append('line {}: from plugins import {}: not in plugins.__all__'.format(line, name))
        elif target.startswith('plugins.'):
            found.append('line {}: imports {} (only `import plugins` / `from plugins import NAME`)'.format(
                line, target))
        elif _within(target, 'projects'):
            whole = target + '.' + name if target == 'projects' and name else target
            if not _within(whole, own):
                found.append('line {}: imports {}, outside its project {}'.format(line, whole, own))
    for line, attribute in _plugins_attributes(tree):
        if attribute not in public and not attribute.startswith('__'):
            found.append('line {}: plugins.{}: not in plugins.__all__'.format(line, attribute))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODULE_PATH_STRING.match(node.value)
            if match and match.group(1) == 'plugins':
                found.append('line {}: names the plugin module {!r}'.format(node.lineno, node.value))
            elif match and not _within(node.value.partition(':')[0], own):
                found.append('line {}: names {!r}, outside its project {}'.format(
                    node.lineno, node.value, own))
    return found


def plugins_public_names():
    import plugins
    return set(plugins.__all__)


def test_projects_reach_the_plugin_layer_only_through_its_public_api_and_never_each_other():
    public = plugins_public_names()
    found = ['{}: {}'.format(path.relative_to(ROOT), v) for path, module, is_package in python_modules('projects')
             for v in public_api_violations(path.read_text(), module, is_package, public)]
    assert found == []


def test_the_public_api_rule_catches_deep_imports_other_projects_and_climbing_out():
    public = {'register_model', 'ResNetTrunk'}
    bad = textwrap.dedent('''\
        import plugins
        import plugins.training.engine
        from plugins import register_model, PluginEngine
        from plugins.nn.heads import ReIDHead
        from plugins import *
        from projects.rga.modules import RGAModule
        from projects import rga
        from .. import casn
        from ...x import y
        from . import config
        from .model import Net
        plugins.register_model('x', Net)
        plugins.training.launch.setup_config('')
        REF = 'projects.rga.benchmark:run'
        OWN = 'projects.scal.benchmark:run'
        LAYER = 'plugins.training.launch'
    ''')
    found = public_api_violations(bad, 'projects.scal.model', False, public)
    lines = sorted({int(v.split(':')[0].split()[1]) for v in found})
    assert lines == [2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 16], found
    assert public_api_violations('from . import model\nfrom .engine import x\n', 'projects.scal',
                                 True, public) == []


# -- rule 2: model code depends only on neutral building blocks --------------------------------

def neutral_names(init_source):
    """The names ``plugins/__init__.py`` imports from ``plugins.nn.*`` or ``plugins.registry``."""
    names = set()
    for node in ast.parse(init_source).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                _within(node.module, 'plugins.nn') or node.module == 'plugins.registry'):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def model_modules(project):
    folder = ROOT / 'projects' / project
    files = MODEL_MODULE_FILES + EXTRA_MODEL_MODULES.get(project, ())
    return ['projects.{}.{}'.format(project, f[:-3]) for f in files if (folder / f).is_file()]


def model_code_violations(source, module, neutral, model_modules_of_project):
    """Violations of: a model module takes from ``plugins`` only ``neutral`` names, from its own
    project only other model modules, and no drawing library."""
    tree = ast.parse(source)
    own = own_package(module)
    found = []
    for line, target, name in imports(tree, module, False):
        if target == 'plugins' and name is not None and name not in neutral:
            found.append('line {}: from plugins import {}: not a plugins.nn/plugins.registry name'.format(
                line, name))
        elif target is not None and target.startswith('plugins.'):
            found.append('line {}: imports {}'.format(line, target))
        elif target is not None and _within(target, own) and target not in model_modules_of_project:
            found.append('line {}: imports {} (not model code)'.format(line, target))
        elif target is not None and target.split('.')[0] in MODEL_CODE_FORBIDDEN:
            found.append('line {}: imports {}'.format(line, target))
    for line, attribute in _plugins_attributes(tree):
        if attribute not in neutral:
            found.append('line {}: plugins.{}: not a plugins.nn/plugins.registry name'.format(line, attribute))
    return found


def test_model_code_uses_only_the_neutral_building_blocks():
    neutral = neutral_names((ROOT / 'plugins' / '__init__.py').read_text())
    assert {'ResNetTrunk', 'ReIDHead', 'model_builder', 'register_model'} <= neutral
    assert not neutral & {'PluginEngine', 'LossTerm', 'setup_config', 'evaluate_rank'}
    checked, found = [], []
    for project in PROJECTS:
        modules = model_modules(project)
        for module in modules:
            path = ROOT / (module.replace('.', '/') + '.py')
            checked.append(module)
            found += ['{}: {}'.format(path.relative_to(ROOT), v)
                      for v in model_code_violations(path.read_text(), module, neutral, modules)]
    assert set(PROJECTS) <= {m.split('.')[1] for m in checked}  # every project has model code
    assert found == []


def test_the_model_code_rule_catches_training_names_and_non_model_siblings():
    neutral = neutral_names('from plugins.nn.backbones import ResNetTrunk\n'
                            'from plugins.registry import MODELS as M, register_engine\n'
                            'from plugins.training.engine import PluginEngine\n'
                            'import plugins.nn.heads\n')
    assert neutral == {'ResNetTrunk', 'M', 'register_engine'}
    bad = textwrap.dedent('''\
        import plugins
        from plugins import ResNetTrunk, PluginEngine
        from .modules import Block
        from .engine import step
        from . import config
        import cv2
        from PIL import Image
        x = plugins.ResNetTrunk
        y = plugins.cross_entropy_term
        from plugins.nn.heads import BNNeck
    ''')
    found = model_code_violations(bad, 'projects.rga.model', neutral,
                                  ['projects.rga.model', 'projects.rga.modules'])
    lines = sorted({int(v.split(':')[0].split()[1]) for v in found})
    assert lines == [2, 4, 5, 6, 7, 9, 10], found


def nn_import_violations(source, module, is_package, known):
    """Direct violations of: a ``plugins.nn`` module imports nothing of ``NN_FORBIDDEN`` and
    does not import from the top-level ``plugins`` package (which imports everything)."""
    found = []
    for line, target, name in imports(ast.parse(source), module, is_package, known):
        if target is None or (target != 'plugins' and '{}: imports {}'.format(line, target) in
                              ' '.join(found)):
            continue
        if target == 'plugins':
            found.append('line {}: imports {} the top-level plugins package (which imports every '
                         'layer)'.format(line, repr(name) + ' from' if name else ''))
        elif any(_within(target, f) for f in NN_FORBIDDEN):
            found.append('line {}: imports {}'.format(line, target))
    return found


def forbidden_chains(graph, start, forbidden):
    """Import chains from ``start`` through ``graph`` (module -> imported modules) that reach a
    module within one of ``forbidden``."""
    chains, seen, todo = [], {start}, [[start]]
    while todo:
        chain = todo.pop()
        for target in sorted(graph.get(chain[-1], ())):
            if any(_within(target, f) for f in forbidden):
                chains.append(' -> '.join(chain + [target]))
            elif target not in seen:
                seen.add(target)
                todo.append(chain + [target])
    return chains


def plugin_import_graph():
    """module -> modules it imports, for every plugins module; importing a module of a
    subpackage also runs the subpackage's ``__init__`` (the top-level one is left out: it is
    the public API, which imports everything by design)."""
    known = known_plugin_modules()
    graph = {}
    for path, module, is_package in python_modules('plugins'):
        targets = set()
        for _, target, _ in imports(ast.parse(path.read_text()), module, is_package, known):
            if target is None:
                continue
            targets.add(target)
            parts = target.split('.')
            targets.update('.'.join(parts[:i]) for i in range(2, len(parts)) if '.'.join(parts[:i]) in known)
        graph[module] = targets - {module}
    return graph


def test_plugins_nn_imports_no_training_drawing_benchmarking_or_evaluation_code():
    known = known_plugin_modules()
    nn_modules = [(p, m, pkg) for p, m, pkg in python_modules('plugins') if _within(m, 'plugins.nn')]
    assert len(nn_modules) > 3
    direct = ['{}: {}'.format(p.relative_to(ROOT), v) for p, m, pkg in nn_modules
              for v in nn_import_violations(p.read_text(), m, pkg, known)]
    graph = plugin_import_graph()
    # through other plugin modules (the direct imports are reported above)
    indirect = [c for _, m, _ in nn_modules for c in forbidden_chains(graph, m, NN_FORBIDDEN)
                if c.count(' -> ') > 1]
    assert direct == [] and indirect == []


def test_the_plugins_nn_rule_catches_direct_relative_and_indirect_imports():
    known = {'plugins.nn.heads', 'plugins.training', 'plugins.training.hooks', 'plugins.distributed',
             'plugins.registry', 'plugins.data.images'}
    bad = textwrap.dedent('''\
        import torch
        from plugins.training.hooks import Hook
        from ..evaluation import protocol
        from plugins import training
        from plugins import PluginEngine
        import cv2
        def f():
            from PIL import Image
        from plugins.registry import MODELS
        from .backbones import ResNetTrunk
    ''')
    found = nn_import_violations(bad, 'plugins.nn.heads', False, known)
    lines = sorted({int(v.split(':')[0].split()[1]) for v in found})
    assert lines == [2, 3, 4, 5, 6, 8], found
    graph = {'plugins.nn.a': {'plugins.registry', 'plugins.nn.b'}, 'plugins.nn.b': {'plugins.data.images'},
             'plugins.data.images': {'cv2', 'numpy'}}
    assert forbidden_chains(graph, 'plugins.nn.a', NN_FORBIDDEN) == [
        'plugins.nn.a -> plugins.nn.b -> plugins.data.images -> cv2']


# -- rule 3: one registry module ----------------------------------------------------------------

def registry_instantiations(source):
    """Lines that call ``Registry(...)`` (by name, alias or attribute)."""
    tree = ast.parse(source)
    names = {'Registry'} | {alias.asname for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                            for alias in node.names if alias.name == 'Registry' and alias.asname}
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id in names)
        or (isinstance(node.func, ast.Attribute) and node.func.attr == 'Registry'))]


def test_registries_are_created_only_in_plugins_registry():
    found = []
    for folder in ('plugins', 'projects', 'tools'):
        for path, module, _ in python_modules(folder):
            if module != 'plugins.registry':
                found += ['{}:{}'.format(path.relative_to(ROOT), line)
                          for line in registry_instantiations(path.read_text())]
    assert found == []
    assert len(registry_instantiations((ROOT / 'plugins' / 'registry.py').read_text())) >= 8


def test_the_registry_rule_catches_every_spelling():
    bad = textwrap.dedent('''\
        import plugins
        from plugins import Registry as R
        A = plugins.Registry('a')
        B = R('b')
        C = Registry('c')
        D = 'Registry(x)'
    ''')
    assert registry_instantiations(bad) == [3, 4, 5]


# -- rule 4: no module-level mutable configuration ---------------------------------------------

def module_state_violations(source):
    """``global`` statements anywhere, and module-level bindings of configuration-like private
    names (``_OPTIONS``, ``_SHARD_SEED``, ``_DISTANCE_DEVICE``, ``_spec``, ...)."""
    tree = ast.parse(source)
    found = ['line {}: global {}'.format(node.lineno, ', '.join(node.names))
             for node in ast.walk(tree) if isinstance(node, ast.Global)]
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and CONFIG_LIKE_NAME.match(name.id):
                    found.append('line {}: module-level configuration {}'.format(node.lineno, name.id))
    return found


def test_no_module_level_mutable_configuration():
    found = ['{}: {}'.format(path.relative_to(ROOT), v) for folder in ('plugins', 'projects')
             for path, _, _ in python_modules(folder) for v in module_state_violations(path.read_text())]
    assert found == []


def test_the_module_state_rule_catches_globals_and_configuration_names():
    bad = textwrap.dedent('''\
        _OPTIONS = {}
        _SHARD_SEED = None
        _DISTANCE_DEVICE = 'cpu'
        _spec: dict = {}
        _sampler_options = {}
        _CHUNK_CELLS = 1 << 22
        DEFAULT_SPEC = {'seed': 0}
        def configure(seed):
            global _SHARD_SEED
            _SHARD_SEED = seed
        class C:
            def f(self):
                global X
    ''')
    lines = sorted(int(v.split(':')[0].split()[1]) for v in module_state_violations(bad))
    assert lines == [1, 2, 3, 4, 5, 9, 13]


# -- rule 5: deleting any one project leaves everything else working --------------------------

def registry_owners():
    """``{registry: {name: owner}}`` for every registry of ``plugins.registry``: the owner is
    ``'projects.<name>'`` for what a project of this repository registered, else the
    top-level package of the code registered. (Builders made by ``model_builder`` are
    defined in plugins.nn; their owner is that of the class they build.)"""
    from plugins import registry

    def module_of(obj):
        if isinstance(obj, str):
            return obj.partition(':')[0]
        if hasattr(obj, 'run_ref'):  # benchmark sections, official checks
            return module_of(obj.run_ref)
        module = getattr(obj, '__module__', None) or ''
        if not module.startswith('projects.'):
            for cell in getattr(obj, '__closure__', None) or ():
                inner = getattr(cell.cell_contents, '__module__', None)
                if isinstance(inner, str) and inner.startswith('projects.'):
                    return inner
        return module

    def owner(obj):
        parts = module_of(obj).split('.')
        return '.'.join(parts[:2]) if parts[0] == 'projects' else parts[0]

    return {kind: {name: owner(reg.get(name)) for name in reg.names()}
            for kind, reg in sorted(vars(registry).items()) if isinstance(reg, registry.Registry)}


SITECUSTOMIZE = '''\
"""Emulates the re-install after projects/{project} was deleted (written by tests/test_architecture.py).

The installed metadata still lists every project's entry point, and the editable install's
finder maps ``projects`` to the original checkout: drop both, so that this copy alone serves
imports and ``torchreid_plugins`` lists only the remaining projects.
"""
import importlib.metadata as _metadata
import sys as _sys

_DROPPED = 'projects.{project}'


def _editable_finder(finder):
    module = _sys.modules.get(getattr(finder, '__module__', None) or '')
    mapping = getattr(module, 'MAPPING', None)
    return isinstance(mapping, dict) and bool({{'plugins', 'projects'}} & set(mapping))


_sys.meta_path[:] = [f for f in _sys.meta_path if not _editable_finder(f)]
_unfiltered = _metadata.entry_points


def _kept(entry):
    return not (entry.group == 'torchreid_plugins' and (
        entry.value == _DROPPED or entry.value.startswith((_DROPPED + '.', _DROPPED + ':'))))


def entry_points(**params):
    found = _unfiltered(**params)
    if isinstance(found, dict):  # SelectableGroups (no arguments, Python < 3.12)
        return type(found)((group, _metadata.EntryPoints(e for e in eps if _kept(e)))
                           for group, eps in found.items())
    return _metadata.EntryPoints(e for e in found if _kept(e))


entry_points.unfiltered = _unfiltered
_metadata.entry_points = entry_points
'''

PROBE = '''\
import contextlib, glob, importlib.metadata, io, json, os, runpy, sys, traceback
project, known = sys.argv[1], json.loads(sys.argv[2])
report = {}


def stage(name, fn):
    try:
        report[name] = fn()
    except BaseException:
        report[name] = {'error': traceback.format_exc()[-4000:]}


OWNERS_SOURCE
import plugins  # a failure here is the report (the parent prints it)
report['plugins_file'] = plugins.__file__
report['projects_path'] = list(sys.modules['projects'].__path__) if 'projects' in sys.modules else None
report['entry_points'] = {e.name: e.value for e in importlib.metadata.entry_points(group='torchreid_plugins')}
stage('loaded', lambda: sorted(plugins.load_projects()))
stage('owners', registry_owners)
stage('leftover_models', lambda: sorted(set(known['models']) & set(plugins.available_models())))
stage('config_nodes', lambda: sorted(plugins.get_default_config()))


def load_configs():
    from plugins.training.launch import setup_config
    loaded, failed = [], {}
    for path in sorted(glob.glob('configs/**/*.yaml', recursive=True)):
        if os.path.basename(path).startswith('_'):  # bases, loaded through the configs naming them
            continue
        try:
            setup_config(path)
            loaded.append(path)
        except Exception as err:
            failed[path] = '{}: {}'.format(type(err).__name__, err)
    return {'loaded': loaded, 'failed': failed}


def train_help():
    out, argv, path = io.StringIO(), sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = ['tools/train.py', '--help'], [os.path.abspath('tools')]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path('tools/train.py', run_name='__main__')
        code = 'returned without exiting'
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv, sys.path[:] = argv, path
    return {'code': code, 'output': out.getvalue()[-3000:]}


def collect(folder='tests'):
    import pytest
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        # plain asserts: rewriting them is most of the collection time, and changes no import
        code = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '--assert=plain',
                            '-p', 'no:hypothesispytest', '-p', 'no:benchmark', folder])
    return {'code': int(code), 'output': out.getvalue()[-6000:]}


def controls():
    """What the checks above must catch, made on purpose: the deleted project imported
    directly (from this copy it is gone), by a test module and by a config."""
    from plugins.training.launch import setup_config
    out = {}
    try:
        importlib.import_module('projects.' + project)
        out['import'] = 'imported from ' + sys.modules['projects.' + project].__file__
    except ModuleNotFoundError as err:
        out['import'] = 'ModuleNotFoundError: {}'.format(err)
    os.makedirs('controls', exist_ok=True)
    with open('controls/test_uses_the_deleted_project.py', 'w') as f:
        f.write('import projects.{}\\n\\n\\ndef test_nothing():\\n    pass\\n'.format(project))
    out['collection'] = collect('controls')
    with open('controls/uses_the_deleted_project.yaml', 'w') as f:
        f.write('_BASE_: ../{}\\n'.format(known['config']))
    try:
        setup_config('controls/uses_the_deleted_project.yaml')
        out['config'] = 'loaded'
    except Exception as err:
        out['config'] = '{}: {}'.format(type(err).__name__, err)
    return out


def stale_entry_point():
    """With the unfiltered metadata (as before reinstalling), loading must fail, naming the project."""
    importlib.metadata.entry_points = importlib.metadata.entry_points.unfiltered
    try:
        plugins.load_projects()
    except ImportError as err:
        return str(err)
    return None


stage('configs', load_configs)
stage('train_help', train_help)
stage('collection', collect)
stage('controls', controls)
stage('stale_entry_point', stale_entry_point)
with open('report.json', 'w') as f:
    json.dump(report, f)
'''

FORK_SERVER = '''\
"""Imports the host libraries (torch, torchvision, torchreid: not part of the repository) once,
then forks one process per copy, ``width`` at a time. Each enters its copy as
``cd <copy>; PYTHONPATH=<copy> python`` would (its sitecustomize.py included) and runs the
probe, which writes report.json; its output goes to probe.log in the copy."""
import json, os, sys, traceback, warnings

warnings.filterwarnings('ignore', message='Cython evaluation')  # as plugins.host.silenced does
import torch, torchvision, torchreid  # noqa: F401,E401

jobs, width = json.loads(sys.argv[1]), int(sys.argv[2])
with open(sys.argv[3]) as f:
    probe = compile(f.read(), 'probe', 'exec')
running = set()
for job in jobs:
    while len(running) >= width:
        running.discard(os.wait()[0])
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log = os.open(os.path.join(job['dest'], 'probe.log'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.chdir(job['dest'])
            os.environ['PYTHONPATH'] = job['dest']
            sys.path.insert(0, job['dest'])
            with open('sitecustomize.py') as f:
                exec(compile(f.read(), 'sitecustomize.py', 'exec'), {'__name__': 'sitecustomize'})
            sys.argv = ['probe', job['project'], json.dumps(job['known'])]
            exec(probe, {'__name__': '__main__'})
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    running.add(pid)
while running:
    running.discard(os.wait()[0])
'''


def repository_files():
    """Tracked and untracked (not ignored) files of the working tree, as they are now."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split('\0')
    return sorted({f for f in listed if f and (ROOT / f).is_file()})


def copy_without(project, dest, files):
    dropped = ('projects/{}/'.format(project), 'configs/{}/'.format(project),
               'tests/projects/{}/'.format(project))
    for name in files:
        if not name.startswith(dropped):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / 'sitecustomize.py').write_text(SITECUSTOMIZE.format(project=project))


def probe_copies(jobs, folder):
    """Run the probe in every copy of ``jobs`` (``[{'project', 'dest', 'known'}]``); returns
    ``{project: report}`` (``{'crashed': log}`` where no report was written)."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONSTARTUP')}
    env.update(OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1')
    (folder / 'probe.py').write_text(PROBE.replace('OWNERS_SOURCE', inspect.getsource(registry_owners)))
    (folder / 'fork_server.py').write_text(FORK_SERVER)
    width = max(2, os.cpu_count() or 2)
    proc = subprocess.run([sys.executable, str(folder / 'fork_server.py'), json.dumps(jobs), str(width),
                           str(folder / 'probe.py')], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)
    reports = {}
    for job in jobs:
        dest = Path(job['dest'])
        if (dest / 'report.json').is_file():
            reports[job['project']] = json.loads((dest / 'report.json').read_text())
        else:
            log = (dest / 'probe.log').read_text() if (dest / 'probe.log').is_file() else ''
            reports[job['project']] = {'crashed': 'server exit {}: {}\n{}'.format(
                proc.returncode, proc.stderr[-3000:], log[-5000:])}
    return reports


@pytest.fixture(scope='module')
def full_registries():
    import plugins  # noqa: F401  (every installed project registered)
    owners = registry_owners()
    assert {o for names in owners.values() for o in names.values() if o.startswith('projects.')} == {
        'projects.' + p for p in PROJECTS}
    return owners


@pytest.fixture(scope='module')
def deletion_reports(full_registries, tmp_path_factory):
    """``{project: report}`` of a copy of the repository without that project, each probed in
    its own process."""
    files = repository_files()
    jobs = []
    for project in PROJECTS:
        dest = tmp_path_factory.mktemp('without_' + project)
        copy_without(project, dest, files)
        jobs.append({'project': project, 'dest': str(dest), 'known': {
            'models': [n for n, o in full_registries['MODELS'].items() if o == 'projects.' + project],
            'config': sorted(f for f in files if f.startswith('configs/{}/'.format(project)))[0]}})
    return probe_copies(jobs, tmp_path_factory.mktemp('probe'))


@pytest.mark.parametrize('project', PROJECTS)
def test_deleting_a_project_leaves_everything_else_working(project, full_registries, deletion_reports):
    report = deletion_reports[project]
    assert 'crashed' not in report, report.get('crashed')
    errors = {k: v['error'] for k, v in report.items() if isinstance(v, dict) and 'error' in v}
    assert errors == {}
    copy_root = str(Path(report['plugins_file']).parents[1])
    assert 'without_' + project in copy_root  # the copy was imported, not this checkout
    assert all(p.startswith(copy_root) for p in report['projects_path'] or [])
    others = [p for p in PROJECTS if p != project]
    ours = sorted(n for n, module in report['entry_points'].items() if module.startswith('projects.'))
    assert ours == others  # (a method installed as its own distribution may be listed too)
    assert report['loaded'] == sorted(report['entry_points'])
    dropped = 'projects.' + project
    # what projects registered (the plugin layer's own entries depend on what a process
    # imported: the built-in benchmark sections register when their module is imported)
    def projects_part(registries):
        return {kind: {n: o for n, o in names.items() if o.startswith('projects.')}
                for kind, names in registries.items()}
    expected = {kind: {n: o for n, o in names.items() if o != dropped}
                for kind, names in projects_part(full_registries).items()}
    assert projects_part(report['owners']) == expected  # the others' models, engines, ...; none of its
    assert any(o == dropped for o in full_registries['MODELS'].values())
    assert report['leftover_models'] == []  # gone from torchreid's own model factory too
    own_nodes = {n for n, o in full_registries['CONFIG_NODES'].items() if o == dropped}
    assert not own_nodes & set(report['config_nodes'])
    other_nodes = {n for n, o in full_registries['CONFIG_NODES'].items() if o != dropped}
    assert other_nodes <= set(report['config_nodes'])
    configs = report['configs']
    assert configs['failed'] == {}
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.yaml')
               if not p.name.startswith('_') and p.parts[len(ROOT.parts) + 1] != project}
    assert set(configs['loaded']) == shipped
    assert report['train_help']['code'] == 0 and 'usage:' in report['train_help']['output']
    collection = report['collection']
    assert collection['code'] == 0, collection['output']
    assert 'error' not in ''.join(collection['output'].strip().splitlines()[-1:]), collection['output']
    assert 'tests/projects/{}/'.format(project) not in collection['output']
    # the checks catch a project deleted under code that still uses it
    controls = report['controls']
    assert controls['import'].startswith('ModuleNotFoundError'), controls['import']
    assert controls['collection']['code'] != 0 and dropped in controls['collection']['output']
    assert controls['config'].startswith('FileNotFoundError') and 'configs/' + project in controls['config']
    # before the re-install, the stale entry point is an error naming the project and the remedy
    stale = report['stale_entry_point']
    assert stale and repr(project) in stale and dropped in stale and 'reinstall' in stale, stale
