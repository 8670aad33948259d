"""zoo.memory.keep_freed_memory: with it, a freed 20 MiB tensor's memory stays with the process (the next one of
that size reuses it); with glibc's defaults it is a mapping of its own, given back when the tensor is freed.
Each case runs in its own process, as the setting is process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import zoo.memory

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")

PROBE = """
import json, sys
import torch
import zoo.memory
applied = zoo.memory.keep_freed_memory() if sys.argv[1] == "keep" else False
def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
before = resident()
tensor = torch.ones(5 << 20)  # 20 MiB, every page touched
del tensor
print(json.dumps({"applied": applied, "kept": resident() - before}))
"""


def probe(mode: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                            env={**os.environ, **(env or {})})
    return json.loads(result.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_memory_stays_with_the_process():
    kept, default = probe("keep"), probe("default")
    assert kept["applied"] is True and default["applied"] is False
    assert kept["kept"] >= 18 << 20, kept
    assert default["kept"] < 4 << 20, default


@glibc_only
def test_the_variable_turns_it_off():
    off = probe("keep", {zoo.memory.ENV_VAR: "0"})
    assert off["applied"] is False and off["kept"] < 4 << 20, off


def test_off_never_calls_glibc(monkeypatch):
    calls = []
    monkeypatch.setattr(zoo.memory, "_apply_once", lambda: calls.append(1) or True)
    monkeypatch.setenv(zoo.memory.ENV_VAR, "0")
    assert zoo.memory.keep_freed_memory() is False and calls == []
    monkeypatch.setenv(zoo.memory.ENV_VAR, "1")
    assert zoo.memory.keep_freed_memory() is True and calls == [1]
