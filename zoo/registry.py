"""The block registry: one name -> one block class.

Blocks register themselves with ``@register_block("name")``. This module is the bottom layer: it
imports nothing of the project. The built-in blocks register when ``zoo.blocks`` is imported: the zoo
package names it in :data:`BUILTIN_MODULES`, and the first lookup imports it (so ``import zoo`` stays
light); third-party blocks, advertised under the ``seqrec_zoo.blocks`` entry-point group, are imported
then too.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from importlib.metadata import entry_points
from typing import Callable, TypeVar

BLOCK_KINDS = ("sequence", "fusion", "readout", "item-encoder", "head")
ENTRY_POINT_GROUP = "seqrec_zoo.blocks"

BUILTIN_MODULES: list[str] = []  # filled by the zoo package (``zoo.blocks``): no project import here
_BLOCKS: dict[str, type] = {}
_ALIASES: dict[str, str] = {}
_entry_points_loaded = False

T = TypeVar("T", bound=type)


class BlockRegistryError(ValueError):
    """A block name is unknown, duplicated, or its class lacks the registry metadata."""


def register_block(name: str, *, aliases: tuple[str, ...] = (), override: bool = False) -> Callable[[T], T]:
    """Class decorator that registers a block under ``name`` (and optional ``aliases``).

    The class must declare ``kind`` (one of :data:`BLOCK_KINDS`) and ``causal`` (bool). Registering
    a name that is already taken raises unless ``override=True``.
    """

    def decorator(cls: T) -> T:
        _load_blocks()  # built-ins first, so a name taken by one is caught whatever the import order
        kind = getattr(cls, "kind", None)
        if kind not in BLOCK_KINDS:
            raise BlockRegistryError(f"block {name!r} ({cls.__qualname__}) must declare kind in {BLOCK_KINDS}, got {kind!r}")
        if not isinstance(getattr(cls, "causal", None), bool):
            raise BlockRegistryError(f"block {name!r} ({cls.__qualname__}) must declare causal = True or False")
        for key in (name, *aliases):
            taken = _BLOCKS.get(key) or _BLOCKS.get(_ALIASES.get(key, ""))
            if taken is not None and taken is not cls and not override:
                raise BlockRegistryError(
                    f"block name {key!r} is already registered by {taken.__module__}.{taken.__qualname__}; "
                    "pass override=True to replace it"
                )
        _BLOCKS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        cls.block_name = name
        return cls

    return decorator


def _load_blocks() -> None:
    """Import the modules that register blocks, once, at the first lookup or registration: the built-in
    ones named in :data:`BUILTIN_MODULES`, then the third-party ones advertised as entry points."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def canonical_name(name: str) -> str:
    """Resolve an alias to the registered name (unchanged when it is not an alias)."""
    _load_blocks()
    return _ALIASES.get(name, name)


def get_block(name: str) -> type:
    """Return the class registered as ``name``; unknown names raise with close matches."""
    _load_blocks()
    key = canonical_name(name)
    if key not in _BLOCKS:
        raise BlockRegistryError(unknown_block_message(name))
    return _BLOCKS[key]


def unknown_block_message(name: str, kind: str | None = None) -> str:
    """Says that ``name`` is no registered block (of ``kind``), with close names; a long name is shortened."""
    known = list_blocks(kind=kind) + [a for a, n in _ALIASES.items() if kind is None or _BLOCKS[n].kind == kind]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6) if len(name) <= 100 else []
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    scope = f"{kind} block" if kind else "block"
    shown = repr(name) if len(name) <= 60 else f"{name[:60]!r}... ({len(name):,} characters)"
    return f"unknown {scope} {shown}{hint} (known: {', '.join(sorted(list_blocks(kind=kind)))})"


def list_blocks(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered block names matching a shell-style ``pattern``, optionally of one ``kind``."""
    _load_blocks()
    if kind is not None and kind not in BLOCK_KINDS:
        raise BlockRegistryError(f"unknown block kind {kind!r}; expected one of {BLOCK_KINDS}")
    return sorted(
        n for n, cls in _BLOCKS.items() if fnmatch.fnmatchcase(n, pattern) and (kind is None or cls.kind == kind)
    )


def create_block(name: str, d_model: int, **kwargs):
    """Instantiate block ``name`` for width ``d_model`` (extra keyword arguments go to its constructor)."""
    return get_block(name)(d_model=d_model, **kwargs)


CONTEXT_ARGS = ("d_model", "num_items", "max_len")


def context_kwargs(cls: type, *, d_model: int, num_items: int | None = None, max_len: int | None = None) -> dict:
    """The model-level facts a block's constructor asks for by name (``d_model``, ``num_items``, ``max_len``).

    Recipes never set these per block: the builder passes them to every block that accepts them.
    """
    import inspect

    params = inspect.signature(cls.__init__).parameters
    facts = {"d_model": d_model, "num_items": num_items, "max_len": max_len}
    return {k: v for k, v in facts.items() if k in params and v is not None}
