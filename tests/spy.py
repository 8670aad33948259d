"""Count the calls of a module-level function while still running it (for dispatch tests)."""

from __future__ import annotations

from types import ModuleType

import pytest


def count_calls(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> list:
    """Wrap ``module.name`` so each call appends to the returned list, then runs the original."""
    calls: list = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    return calls
