"""When the compiled CPU kernels run: SEQREC_ZOO_CPU_KERNEL unset (auto), 1 (always) or 0 (never)."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.blocks import compiled


@pytest.fixture
def fresh_auto_mode():
    """Forget which kernels auto mode found usable, before and after the test."""
    compiled._built_in_auto_mode.cache_clear()
    yield
    compiled._built_in_auto_mode.cache_clear()


@pytest.mark.parametrize("value, mode", [(None, "auto"), ("", "auto"), ("auto", "auto"), ("1", "on"), ("0", "off"),
                                         (" AUTO ", "auto")])
def test_the_variable_chooses_the_mode(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv(compiled.KERNEL_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(compiled.KERNEL_ENV_VAR, value)
    assert compiled.mode() == mode


def test_an_unknown_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "yes")
    with pytest.raises(ValueError, match=f"{compiled.KERNEL_ENV_VAR}='yes'.*expected 1"):
        compiled.enabled("attention")


def test_off_and_on_never_look_at_the_compiler(monkeypatch, fresh_auto_mode):
    monkeypatch.setattr(compiled, "compiler", lambda: pytest.fail("the compiler was looked up"))
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "0")
    assert not compiled.enabled("attention")
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "1")
    assert compiled.enabled("attention")


def test_auto_without_a_compiler_warns_once_and_runs_the_pure_path(monkeypatch, fresh_auto_mode):
    monkeypatch.delenv(compiled.KERNEL_ENV_VAR, raising=False)
    monkeypatch.setattr(compiled, "compiler", lambda: None)
    monkeypatch.setattr(compiled, "load", lambda kernel: pytest.fail("a build was attempted"))
    torch.manual_seed(0)
    model = zoo.create("sasrec", num_items=20).eval()
    ids = torch.randint(1, 21, (3, 6))
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found") as caught:
        with torch.no_grad():
            auto = model.score(ids)
            model.score(ids)
    assert len([w for w in caught if "transformer_layer" in str(w.message)]) == 1  # once per kernel, not per call
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "0")
    with torch.no_grad():
        torch.testing.assert_close(auto, model.score(ids), rtol=0, atol=0)


def test_auto_with_a_failing_build_warns_and_falls_back(monkeypatch, fresh_auto_mode):
    monkeypatch.delenv(compiled.KERNEL_ENV_VAR, raising=False)
    monkeypatch.setattr(compiled, "compiler", lambda: "/usr/bin/c++")

    def failing_build(kernel):
        raise RuntimeError(f"building the compiled CPU {kernel} kernel failed (boom).")

    monkeypatch.setattr(compiled, "load", failing_build)
    with pytest.warns(UserWarning, match="attention kernel failed \\(boom\\).*pure-PyTorch path runs instead"):
        assert not compiled.enabled("attention")


def test_auto_with_a_compiler_uses_the_kernels(monkeypatch, fresh_auto_mode):
    if compiled.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.delenv(compiled.KERNEL_ENV_VAR, raising=False)
    assert compiled.enabled("attention")
    assert compiled.applies("attention", torch.zeros(2))
    assert not compiled.serves_inference("attention", torch.zeros(2, requires_grad=True), dropout_active=False)
    assert not compiled.serves_inference("attention", torch.zeros(2), dropout_active=True)


def test_a_first_build_announces_itself_and_a_failed_one_says_how_to_fall_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # a fresh build folder, so it must compile
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match=f"set {compiled.KERNEL_ENV_VAR}=0 to use the pure-PyTorch path"):
        compiled.load.__wrapped__("attention")
    assert "compiling the CPU attention kernel (first use on this machine" in capsys.readouterr().err
