"""A tiny name -> object registry, one per extension point.

Every extension point of the plugin layer (models, samplers, engines, hooks,
project config nodes) is a :class:`Registry`. Registering a name twice is an
error that names both owners; asking for an unknown name is an error that lists
what is available.
"""


def _owner(obj):
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
