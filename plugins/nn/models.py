"""Model registry: our builders appear inside torchreid's own model factory.

``torchreid.models.build_model`` looks names up in a module-private dict. We
insert every registered builder into that dict once, so ``build_model``,
``show_avai_models`` and ``FeatureExtractor(model_name=...)`` see plugin models
exactly like built-in ones.

A builder is called as ``builder(num_classes, loss='softmax', pretrained=True,
use_gpu=True, **extras)``. ``extras`` are config values (for example
``height``/``width``) that :func:`build_model` passes when the builder's
signature names them; the host's ``build_model`` passes none, so those
parameters need defaults.
"""
import inspect

from torchreid.reid import models as host_models

from plugins.nn.pretrained import offline_pretrained
from plugins.registry import MODELS, register_attention_maps

# The host keeps its factory in a module-private, name-mangled global.
_HOST_FACTORY = vars(host_models)['__model_factory']


def register_model(name, builder=None):
    """Register ``builder`` as model ``name`` (also usable as ``@register_model(name)``).

    Raises:
        KeyError: the name is taken by a plugin or by a torchreid built-in model.
    """
    if builder is None:
        return lambda b: register_model(name, b)
    if name in _HOST_FACTORY and name not in MODELS:
        raise KeyError(
            'Duplicate model name {!r}: it is a torchreid built-in model'.format(name)
        )
    MODELS.register(name, builder)
    _HOST_FACTORY[name] = builder
    return builder


def register_models(builders, attention_maps=None):
    """Register every ``name: builder`` of ``builders``; with ``attention_maps`` (see
    :func:`plugins.registry.register_attention_maps`), expose it for each of them."""
    for name, builder in builders.items():
        register_model(name, builder)
        if attention_maps is not None:
            register_attention_maps(name, attention_maps)


def unregister_model(name):
    MODELS.unregister(name)
    del _HOST_FACTORY[name]


def available_models():
    """Every name ``torchreid.models.build_model`` accepts (built-ins and plugins)."""
    return sorted(_HOST_FACTORY)


def model_builder(cls, name, **fixed):
    """A torchreid-style builder ``name(num_classes, loss='softmax', pretrained=True, use_gpu=True, ...)``.

    Builds ``cls(num_classes, loss, pretrained=..., **fixed, **options)``; its other
    keyword parameters are ``cls``'s own (those not fixed), with ``cls``'s defaults,
    so :func:`build_model` passes it the config extras ``cls`` takes (``height``,
    ``width``, ``pretrained_path``) and a plain ``torchreid.models.build_model``
    call gets the defaults. ``use_gpu`` is accepted and ignored, as torchreid's
    builders do.
    """
    own = [p for p in inspect.signature(cls.__init__).parameters.values()
           if p.name not in ('self', 'num_classes', 'loss', 'pretrained') and p.name not in fixed
           and p.kind is p.POSITIONAL_OR_KEYWORD]

    def build(num_classes, loss='softmax', pretrained=True, use_gpu=True, **options):
        return cls(num_classes, loss, pretrained=pretrained, **fixed, **options)

    P = inspect.Parameter
    build.__signature__ = inspect.Signature(
        [P('num_classes', P.POSITIONAL_OR_KEYWORD), P('loss', P.POSITIONAL_OR_KEYWORD, default='softmax'),
         P('pretrained', P.POSITIONAL_OR_KEYWORD, default=True),
         P('use_gpu', P.POSITIONAL_OR_KEYWORD, default=True)]
        + [P(p.name, P.KEYWORD_ONLY, default=p.default) for p in own])
    build.__name__ = build.__qualname__ = name
    build.__doc__ = '{} ({}), torchreid builder signature.'.format(name, ', '.join(
        '{}={!r}'.format(k, v) for k, v in fixed.items()) or cls.__name__)
    return build


def build_model(name, num_classes, loss='softmax', pretrained=True, use_gpu=True,
                pretrained_path='', **extras):
    """Build any model offline, passing the config ``extras`` a plugin builder asks for.

    Extras a builder does not name are dropped, so one call site serves
    torchreid's built-ins and every plugin model. ImageNet weights come from
    ``pretrained_path`` or torch's cache, never from the network
    (:func:`plugins.nn.pretrained.offline_pretrained`).
    """
    if name not in _HOST_FACTORY:
        raise KeyError('Unknown model: {!r}. Available: {}'.format(name, available_models()))
    builder = _HOST_FACTORY[name]
    accepted = inspect.signature(builder).parameters
    wanted = {k: v for k, v in extras.items() if k in accepted}
    if 'pretrained_path' in accepted:
        wanted['pretrained_path'] = pretrained_path
    with offline_pretrained(pretrained_path if pretrained else ''):
        return builder(
            num_classes=num_classes, loss=loss, pretrained=pretrained, use_gpu=use_gpu, **wanted
        )
