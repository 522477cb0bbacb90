"""Project discovery through the ``torchreid_plugins`` entry-point group.

Each project package (ours under ``projects/``, or a third-party one) declares
``torchreid_plugins = <name> = <importable.module>`` in its packaging metadata;
importing that module registers its models, samplers, engines, hooks and
config node through the ``plugins`` API.

Loading is strict: a declared project that fails to import is an error naming
it, never skipped. When its package is gone (deleted or moved without
reinstalling the distribution that declares it, whose metadata still lists the
entry point) the message says so and what to reinstall.
"""
import importlib.metadata

ENTRY_POINT_GROUP = 'torchreid_plugins'
_loaded = {}


def load_projects():
    """Import every installed project once; returns ``{name: module}`` of those loaded.

    Raises:
        ImportError: a declared project could not be imported (the message names it).
    """
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _loaded:
            continue
        try:
            _loaded[entry.name] = entry.load()
        except Exception as err:
            raise ImportError(load_error_message(entry, err)) from err
    return dict(_loaded)


def package_is_gone(entry, err):
    """Whether ``err`` says that the module ``entry`` names, or a package above it, does not exist
    (rather than that something the project imports is missing)."""
    missing = getattr(err, 'name', None) if isinstance(err, ModuleNotFoundError) else None
    return bool(missing) and (entry.module == missing or entry.module.startswith(missing + '.'))


def _distribution_name(entry):
    dist = getattr(entry, 'dist', None)
    try:
        return dist.metadata['Name'] if dist is not None else None
    except Exception:  # unreadable metadata: the message just does not name it
        return None


def load_error_message(entry, err):
    """What :func:`load_projects` says when the project of ``entry`` fails to import with ``err``."""
    dist = _distribution_name(entry)
    declared = 'entry point {!r} in group {!r}{}'.format(
        '{} = {}'.format(entry.name, entry.value), ENTRY_POINT_GROUP,
        ' of the installed distribution {!r}'.format(dist) if dist else '')
    if not package_is_gone(entry, err):
        return 'Could not load reid-plugins project {!r} ({}): {}: {}'.format(
            entry.name, declared, type(err).__name__, err)
    if entry.module.startswith('projects.'):  # one of this repository's projects
        remedy = ('reinstall this repository (pip install -e . in its root) so that its entry points '
                  'list only the projects under projects/')
    else:
        remedy = 'reinstall the distribution that declares it{}, or uninstall it{}'.format(
            ' ({})'.format(dist) if dist else '', ' (pip uninstall {})'.format(dist) if dist else '')
    return ('reid-plugins project {!r} is declared ({}) but its package {!r} is gone ({}): the '
            'installed packaging metadata is stale, as after deleting or moving a project without '
            'reinstalling. To drop or restore the project, {}.'.format(
                entry.name, declared, entry.module, err, remedy))
