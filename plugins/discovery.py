"""Project discovery through the ``torchreid_plugins`` entry-point group.

Each project package (ours under ``projects/``, or a third-party one) declares
``torchreid_plugins = <name> = <importable.module>`` in its packaging metadata;
importing that module registers its models, samplers, engines, hooks and
config node through the ``plugins`` API.
"""
import importlib.metadata

ENTRY_POINT_GROUP = 'torchreid_plugins'
_loaded = {}


def load_projects():
    """Import every installed project once; returns ``{name: module}`` of those loaded."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _loaded:
            continue
        try:
            _loaded[entry.name] = entry.load()
        except Exception as err:
            raise ImportError('Could not load reid-plugins project {!r} ({}): {}'.format(
                entry.name, entry.value, err)) from err
    return dict(_loaded)
