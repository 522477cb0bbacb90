"""Every extension point of the plugin layer, in one light module.

Each extension point is a :class:`Registry` (name -> object). Registering a name twice is
an error that names both owners; asking for an unknown name is an error that lists what is
available. This module imports nothing heavy, so registering is cheap: a project that adds
a benchmark section or an official check names the module that implements it as a
``'package.module:attribute'`` string (:func:`resolve`), imported only when the tool runs.

=======================  ====================================  ==============================
registry                 registered with                       read by
=======================  ====================================  ==============================
:data:`MODELS`           ``plugins.register_model(s)``         ``build_model`` (the host's too)
:data:`SAMPLERS`         ``plugins.register_sampler``          the host's data managers
:data:`ENGINES`          :func:`register_engine`               ``build_engine`` (``engine.name``)
:data:`CONFIG_NODES`     :func:`register_config`               ``get_default_config``
:data:`CONFIG_CHECKS`    :func:`register_config` (``check``)   ``setup_config`` (``check_config``)
:data:`ATTENTION_MAPS`   :func:`register_attention_maps`       ``tools/visualize.py attention``
:data:`APPEARANCE_SWAPS` :func:`register_appearance_swap`      ``tools/visualize.py swap``
:data:`BENCHMARKS`       :func:`register_benchmark`            ``tools/benchmark.py``
:data:`OFFICIAL_CHECKS`  :func:`register_official_check`       ``tools/check_official.py``
=======================  ====================================  ==============================
"""
import importlib
from collections import namedtuple


def _owner(obj):
    if isinstance(obj, str):
        return obj
    module = getattr(obj, '__module__', None) or type(obj).__module__
    qualname = getattr(obj, '__qualname__', None) or repr(obj)
    return '{}.{}'.format(module, qualname)


class Registry:
    """Maps names to objects for one kind of extension (``kind`` is used in messages)."""

    def __init__(self, kind):
        self.kind = kind
        self._objects = {}

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; used as ``register(name, obj)`` or as a decorator.

        Raises:
            KeyError: ``name`` is already registered (the message names the owner).
        """
        if obj is None:
            return lambda o: self.register(name, o)
        if not isinstance(name, str) or not name:
            raise TypeError('{} name must be a non-empty string, got {!r}'.format(self.kind, name))
        if name in self._objects:
            raise KeyError(
                'Duplicate {} name {!r}: already registered by {}, cannot register {}'.format(
                    self.kind, name, _owner(self._objects[name]), _owner(obj)
                )
            )
        self._objects[name] = obj
        return obj

    def unregister(self, name):
        """Remove ``name`` (tests and interactive sessions use this)."""
        del self._objects[name]

    def get(self, name):
        """Return the object registered as ``name``; unknown names raise ``KeyError``."""
        try:
            return self._objects[name]
        except KeyError:
            raise KeyError(
                'Unknown {}: {!r}. Available: {}'.format(self.kind, name, sorted(self._objects))
            ) from None

    def names(self):
        return sorted(self._objects)

    def __contains__(self, name):
        return name in self._objects

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return len(self._objects)

    def __repr__(self):
        return 'Registry({!r}, {})'.format(self.kind, self.names())


def resolve(ref):
    """``ref`` itself, or for a ``'package.module:attribute'`` string that attribute (imported
    now); a malformed string is a ``ValueError`` saying what is expected."""
    if not isinstance(ref, str):
        return ref
    module, sep, attribute = ref.partition(':')
    if not (module and sep and attribute):
        raise ValueError("expected 'package.module:attribute', got {!r}".format(ref))
    return getattr(importlib.import_module(module), attribute)


MODELS = Registry('model')
SAMPLERS = Registry('sampler')
ENGINES = Registry('engine')
CONFIG_NODES = Registry('config node')
CONFIG_CHECKS = Registry('config check')
ATTENTION_MAPS = Registry('attention map')
APPEARANCE_SWAPS = Registry('appearance swap')
BENCHMARKS = Registry('benchmark section')
OFFICIAL_CHECKS = Registry('official check')


def _decorator_or_register(registry, name, obj):
    if obj is None:
        return lambda o: registry.register(name, o)
    return registry.register(name, obj)


def register_engine(name, builder=None):
    """Register ``builder(cfg, datamanager, model, optimizer, scheduler) -> PluginEngine``
    as engine ``name`` (also usable as a decorator)."""
    return _decorator_or_register(ENGINES, name, builder)


def register_config(name, add_fn=None, check=None):
    """Register ``add_fn(cfg)``, which adds a project's keys with their defaults, and optionally
    ``check(cfg)``, which raises ``ValueError`` naming the key to fix when a config (any
    config: the check looks at the keys it cares about) cannot run; every config is checked
    when it is read, before any data is loaded."""
    if add_fn is None:
        return lambda f: register_config(name, f, check)
    if check is not None:
        CONFIG_CHECKS.register(name, check)
    return CONFIG_NODES.register(name, add_fn)


def register_attention_maps(model_name, fn=None):
    """Expose a model's own attention: ``fn(model, images) -> {name: Tensor (N, h, w)}``.

    ``model_name`` is the registered model name (``cfg.model.name``); models without an
    entry get Grad-CAM."""
    return _decorator_or_register(ATTENTION_MAPS, model_name, fn)


def register_appearance_swap(model_name, fn=None):
    """Expose a generative model's appearance/structure swap for ``tools/visualize.py swap``.

    ``fn(model, weights, structures, appearances) -> Tensor (S, A, 3, H, W)``: image ``[i, j]``
    has the structure (pose, background) of ``structures[i]`` and the appearance of
    ``appearances[j]``, in the input normalisation. ``model`` is the ReID model loaded from
    the checkpoint ``weights``; the function finds its generator next to it.
    """
    return _decorator_or_register(APPEARANCE_SWAPS, model_name, fn)


class Section(namedtuple('Section', ['run_ref', 'markdown_ref'])):
    """A benchmark section: ``run(args, previous, save) -> result`` (``previous``: the
    section's result from an earlier report, ``save(result)`` writes it at once) and
    ``markdown(result) -> str``; each a callable or a ``'module:attribute'`` string."""

    def run(self, args, previous, save):
        return resolve(self.run_ref)(args, previous, save)

    def markdown(self, result):
        return resolve(self.markdown_ref)(result)


def register_benchmark(name, run, markdown):
    """Register benchmark section ``name`` (see :class:`Section`)."""
    return BENCHMARKS.register(name, Section(run, markdown))


class OfficialCheck(namedtuple('OfficialCheck', ['repository', 'markers', 'run_ref', 'time_ref'])):
    """``repository``: the official repository (owner/name); ``markers``: paths, relative to a
    clone's root, that identify a clone of it; ``run(code, args) -> Report``: the check,
    given the imported official code and the tool's arguments; ``time(code, args) -> Report``
    (optional): the official and our training iteration timed side by side (``--time``).
    ``run`` and ``time`` are callables or ``'module:attribute'`` strings."""

    @property
    def run(self):
        return resolve(self.run_ref)

    @property
    def time(self):
        return None if self.time_ref is None else resolve(self.time_ref)


def register_official_check(name, repository, markers, run, time=None):
    """Register the check against official code ``name`` (see :class:`OfficialCheck`)."""
    return OFFICIAL_CHECKS.register(name, OfficialCheck(repository, tuple(markers), run, time))
