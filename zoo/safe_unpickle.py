"""Read torch checkpoints written elsewhere without running code from them: a restricted unpickler.

A torch checkpoint (``torch.save``) is a pickle, and unpickling an ordinary pickle calls whatever
function the file names (``os.system``, ``builtins.eval``, ...). The :class:`Unpickler` here rebuilds
plain data only: dict, list, tuple, set, str, bytes, int, float, bool, None (the pickle opcodes
themselves), and from the globals a file may name only ``collections.OrderedDict``, ``torch.Size``,
torch dtypes and torch's tensor and parameter rebuild functions (``torch._utils._rebuild_tensor_v2``,
``_rebuild_tensor_v3``, ``_rebuild_parameter``; the storages behind them are read by torch's own
reader). Every other global becomes an inert :class:`Placeholder` class: calling it, instantiating it
or giving it state only records the arguments as data. Nothing is imported on the file's behalf and
no code from it runs, so a RecBole ``Config`` object inside a checkpoint loads as a placeholder
(its attributes readable through :attr:`Placeholder.state`) without RecBole installed, and a
malicious ``__reduce__`` gives a placeholder that records what it would have called.

:func:`load_checkpoint` reads a file with ``torch.load(path, pickle_module=zoo.safe_unpickle)``:
torch's reader handles the file layout (zip or legacy) and the tensor storages, and every global the
file names goes through :meth:`Unpickler.find_class` here.
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch
import torch._utils


class UnreadableCheckpointError(ValueError):
    """A file that is not a checkpoint this reader can rebuild (the message names the file)."""


class Placeholder:
    """A global the file named that this reader does not build (``module.qualname``), kept as data.

    Instances record what the file gave them: ``args`` / ``kwargs`` (from a call or ``__new__``),
    ``state`` (from ``__setstate__``) and ``items`` (from item assignment or appends). None of its
    methods calls anything.
    """

    module: ClassVar[str] = ""
    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        instance = object.__new__(cls)
        instance.args, instance.kwargs, instance.state, instance.items = args, kwargs, None, []
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: :meth:`__new__` recorded the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    @classmethod
    def global_name(cls) -> str:
        """``module.qualname`` as the file wrote it."""
        return f"{cls.module}.{cls.qualname}"

    def __repr__(self) -> str:
        return f"<placeholder for {self.global_name()}>"


def _dtypes() -> dict[tuple[str, str], torch.dtype]:
    """``("torch", "float32") -> torch.float32`` for every dtype torch exports (pickled by name)."""
    return {("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): torch._utils._rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **_dtypes(),
}


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are :data:`ALLOWED_GLOBALS` or inert :class:`Placeholder` classes."""

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._placeholders: dict[tuple[str, str], type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)  # protocol 2 files name Python 2's module
        if key in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[key]
        if key not in self._placeholders:
            label = f"Placeholder[{key[0]}.{name}]"
            self._placeholders[key] = type(label, (Placeholder,), {"module": key[0], "qualname": name})
        return self._placeholders[key]


def load(file: BinaryIO, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`Unpickler` (torch's reader calls it for the legacy file layout)."""
    return Unpickler(file, **kwargs).load()


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The object a ``torch.save`` file holds, rebuilt by :class:`Unpickler`: tensors on the CPU, plain
    containers, and :class:`Placeholder` objects for anything else. Never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file)")
    try:
        # weights_only=False only because torch refuses a custom pickle_module otherwise: the safety is this
        # module's Unpickler, through which torch resolves every global the file names.
        return torch.load(path, map_location="cpu", pickle_module=sys.modules[__name__], weights_only=False)
    except Exception as exc:  # a file of any content: every failure means "not readable here"
        raise UnreadableCheckpointError(
            f"{path}: not a torch checkpoint this reader can rebuild ({type(exc).__name__}: {exc})"
        ) from exc

