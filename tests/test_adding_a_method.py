"""docs/adding_a_method.md, followed literally.

Every fenced block of the page whose first line is ``# file: PATH`` is written to PATH in a
scratch folder; the blocks whose first line is ``# step: NAME`` are the commands, run in
order: ``install`` (pip, offline, into a target folder instead of the page's editable
install), ``check`` and ``train`` (on a tiny synthreid, with the page's config and only the
dataset, size and schedule overridden). ``walk_through`` stops at the first stage that
fails with a :class:`WalkThroughError` saying what went wrong.
"""
import ast
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY_SYNTHREID
from tests.test_architecture import (model_code_violations, neutral_names, plugins_public_names,
                                     public_api_violations)

DOC = Path(REPO) / 'docs' / 'adding_a_method.md'
FENCE = re.compile(r'^\s*(```|~~~)')
FILE_MARK = re.compile(r'^#\s*file:\s*(\S+)\s*$')
STEP_MARK = re.compile(r'^#\s*step:\s*(\w+)\s*$')
PLACEHOLDER = 'path/to/'  # the page's commands name the package folder as path/to/<folder>
STAGES = ('extract', 'install', 'check', 'train')
# a tiny synthreid at 32x16, one epoch of batch 8, a small evaluation
TINY = [*TINY_SYNTHREID, 'data.height', '32', 'data.width', '16', 'train.max_epoch', '1',
        'train.batch_size', '8', 'data.workers', '0', 'test.batch_size', '16', 'train.print_freq', '1']


class WalkThroughError(AssertionError):
    """A stage of the walk-through failed; the message says which and why."""


def fenced_blocks(text):
    """``[[lines inside]]`` of every fenced block."""
    blocks, current = [], None
    for line in text.split('\n'):
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def doc_parts(text):
    """``(files {path: text}, steps {name: [command lines]})`` of the page."""
    files, steps = {}, {}
    for block in fenced_blocks(text):
        if not block:
            continue
        file_mark, step_mark = FILE_MARK.match(block[0]), STEP_MARK.match(block[0])
        if file_mark:
            path = file_mark.group(1)
            if path in files or path.startswith(('/', '..')):
                raise WalkThroughError('extract: file block {!r} repeated or outside the package'.format(path))
            files[path] = '\n'.join(block) + '\n'
        elif step_mark:
            lines = [line for line in block[1:] if line.strip() and not line.lstrip().startswith('#')]
            steps.setdefault(step_mark.group(1), []).extend(lines)
    return files, steps


def package_folder(files):
    """The folder that holds ``pyproject.toml`` (the distribution's root)."""
    roots = [p.rpartition('/')[0] for p in files if p.rpartition('/')[2] == 'pyproject.toml']
    if len(roots) != 1 or not roots[0]:
        raise WalkThroughError('extract: expected one <folder>/pyproject.toml block, got {}'.format(sorted(files)))
    return roots[0]


def static_problems(files, folder):
    """The package's Python files reach the plugin layer only through ``plugins.__all__``, and
    its model code only through the neutral building blocks."""
    public = plugins_public_names()
    neutral = neutral_names((Path(REPO) / 'plugins' / '__init__.py').read_text())
    problems = []
    for path, source in files.items():
        if not path.endswith('.py'):
            continue
        parts = Path(path).relative_to(folder).with_suffix('').parts
        is_package = parts[-1] == '__init__'
        module = '.'.join(parts[:-1] if is_package else parts)
        found = public_api_violations(source, module, is_package, public)
        if parts[-1] == 'model':
            found += model_code_violations(source, module, neutral, [module])
        problems += ['{}: {}'.format(path, v) for v in found]
    return problems


def run(command, cwd, site, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])))
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def python_command(line, folder, work):
    """A ``python ...`` line of the page as an argument list: this interpreter, the
    repository's tools, and the package folder where the page says ``path/to/<folder>``."""
    args = shlex.split(line)
    if not args or args[0] != 'python':
        raise WalkThroughError('not a python command: {!r}'.format(line))
    args[0] = sys.executable
    out = []
    for arg in args:
        if arg.startswith('tools/'):
            arg = os.path.join(REPO, arg)
        out.append(arg.replace(PLACEHOLDER + folder, str(work / folder)))
    return out


def installed_projects(site):
    """``{name: module}`` of the ``torchreid_plugins`` entry points installed in ``site``."""
    return {e.name: e.value for dist in importlib.metadata.distributions(path=[str(site)])
            for e in dist.entry_points if e.group == 'torchreid_plugins'}


def walk_through(text, work, until='train'):
    """Follow the page ``text`` in the folder ``work`` up to stage ``until``; returns what each
    stage produced. Raises :class:`WalkThroughError` at the first stage that fails."""
    done = {}
    files, steps = doc_parts(text)
    folder = package_folder(files)
    missing = [s for s in STAGES[1:] if not steps.get(s)]
    if missing:
        raise WalkThroughError('extract: no "# step:" block for {}'.format(missing))
    problems = static_problems(files, folder)
    if problems:
        raise WalkThroughError('extract: the package breaks the plugin rules:\n' + '\n'.join(problems))
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    done['extract'] = sorted(files)
    if until == 'extract':
        return done

    # install: the page installs the folder with pip; here offline, into a target folder
    if steps['install'] != ['pip install -e {}{}'.format(PLACEHOLDER, folder)]:
        raise WalkThroughError('install: expected "pip install -e {}{}", got {}'.format(
            PLACEHOLDER, folder, steps['install']))
    site = work / 'site'
    code, out = run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
                     '--no-build-isolation', '--disable-pip-version-check', '--target', str(site),
                     str(work / folder)], cwd=work, site=site)
    if code:
        raise WalkThroughError('install: pip failed:\n' + out[-3000:])
    projects = installed_projects(site)
    importable = {name: module for name, module in projects.items()
                  if (site / module.partition(':')[0].replace('.', '/')).is_dir()
                  or (site / (module.partition(':')[0].replace('.', '/') + '.py')).is_file()}
    if not projects or importable != projects:
        raise WalkThroughError('install: the package must declare its module in the torchreid_plugins '
                               'entry-point group; installed entry points: {}, of which name an installed '
                               'module: {}'.format(projects, importable))
    done['install'] = projects
    if until == 'install':
        return done

    for stage in STAGES[2:]:
        outputs = []
        for line in steps[stage]:
            command = python_command(line, folder, work)
            if stage == 'train':
                command += TINY
            code, out = run(command, cwd=work, site=site)
            if code:
                raise WalkThroughError('{}: {!r} exited with {}:\n{}'.format(stage, line, code, out[-5000:]))
            outputs.append(out)
        done[stage] = '\n'.join(outputs)
        if until == stage:
            break
    return done


def test_the_page_marks_its_files_and_commands():
    files, steps = doc_parts(DOC.read_text())
    folder = package_folder(files)
    names = {p.rpartition('/')[2] for p in files}
    assert {'pyproject.toml', '__init__.py', 'model.py', 'engine.py', 'config.py'} <= names
    assert any(p.endswith('.yaml') for p in files)
    assert set(STAGES[1:]) <= set(steps)
    assert '[project.entry-points.torchreid_plugins]' in files[folder + '/pyproject.toml']
    for path, source in files.items():  # the Python blocks are valid code
        if path.endswith('.py'):
            ast.parse(source, path)
    assert static_problems(files, folder) == []


def test_the_walk_through_installs_registers_and_trains(tmp_path):
    done = walk_through(DOC.read_text(), tmp_path)
    assert done['install'] == {'toy': 'reid_toy_method'}
    assert 'True True' in done['check'].splitlines()  # what the page says it prints
    out = done['train']
    assert re.search(r"Plugin projects: \[.*'toy'", out), out[-3000:]
    assert 'Building model: toy_resnet50' in out and 'Building toy engine' in out
    assert 'confidence_weight: 0.1' in out  # the config node, set by the page's config
    assert re.search(r'loss_x [\d.]+\s+loss_conf -?[\d.]+', out), out[-3000:]  # the engine's terms
    assert re.search(r'Rank-1\s*:\s*[\d.]+%', out) and 'mAP' in out
    checkpoint = tmp_path / 'log' / 'toy_resnet50_synthreid' / 'model' / 'model.pth.tar-1'
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert any(k.startswith('trunk.stages.') for k in state) and 'head.classifier.1.weight' in state


def test_a_broken_page_is_reported_at_the_stage_that_fails(tmp_path):
    """The helper fails where the page is wrong: a deep plugin import, the entry point."""
    text = DOC.read_text()
    deep = text.replace('from plugins import ReIDHead, ResNetTrunk, model_builder',
                        'from plugins.nn.heads import ReIDHead\n'
                        'from plugins import ResNetTrunk, model_builder')
    assert deep != text
    with pytest.raises(WalkThroughError, match=r'(?s)extract: .*model.py: line \d+: imports plugins\.nn\.heads'):
        walk_through(deep, tmp_path / 'deep', until='extract')

    broken = text.replace('toy = "reid_toy_method"', 'toy = "reid_toy_methd"')
    assert broken != text
    with pytest.raises(WalkThroughError, match=r"install: .*'toy': 'reid_toy_methd'"):
        walk_through(broken, tmp_path / 'broken', until='install')
