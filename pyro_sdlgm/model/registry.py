"""Name-keyed registries that make priors, guides and likelihoods declarative.

A configuration names a component either by a string (``"uniform"``) or by a table
with a ``name`` key and the component's options
(``{name = "truncated_poisson", rate = 3.0}``). Users add their own components
with the registry's decorator and then use them by name, without editing the
package::

    from pyro_sdlgm import register_sparsity_prior
    from pyro_sdlgm.model.priors import SparsityPrior

    @register_sparsity_prior("two_point")
    class TwoPoint(SparsityPrior):
        ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pyro_sdlgm.exceptions import ConfigError, UnknownComponentError

T = TypeVar("T")

ComponentSpec = str | Mapping[str, Any]


def component_name(spec: ComponentSpec, kind: str) -> tuple[str, dict[str, Any]]:
    """Split a component spec into ``(name, options)``; raise ``ConfigError`` if malformed."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"{kind} spec {dict(spec)!r} has no 'name' key")
        options = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{kind} name must be a string, got {name!r}")
        return name, options
    raise ConfigError(
        f"{kind} must be a name or a table with a 'name' key, got {spec!r} ({type(spec).__name__})"
    )


class Registry(Generic[T]):
    """A mapping from names to factories (classes or functions) of one kind of component.

    Factories are called as ``factory(spec, **options)`` where ``spec`` is the
    :class:`~pyro_sdlgm.model.spec.ModelSpec` and ``options`` come from the config.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``.

        Registering an existing name raises unless ``overwrite=True``, so that a
        typo cannot silently replace a built-in component.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and not overwrite:
                raise ConfigError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
                )
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            ) from None

    def build(self, spec: ComponentSpec, *args: Any) -> T:
        """Instantiate the component that ``spec`` names, passing ``args`` then its options."""
        name, options = component_name(spec, self.kind)
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(*args, **options)
        except TypeError as err:
            accepted = [
                p.name
                for p in list(inspect.signature(factory).parameters.values())[len(args):]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            raise ConfigError(
                f"bad options {sorted(options)} for {self.kind} {name!r} ({err}); "
                f"accepted options: {accepted}"
            ) from None
        try:
            return factory(*args, **options)
        except ConfigError:
            raise
        except (TypeError, ValueError, OverflowError) as err:
            raise ConfigError(f"bad options {options} for {self.kind} {name!r}: {err}") from None
