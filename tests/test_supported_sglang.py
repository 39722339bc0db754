"""sglang_ext loads on the SGLang releases it supports and refuses any other, naming them and the fix."""

import pytest

import sglang_ext
from sglang_ext import SUPPORTED_SGLANG, UnsupportedSGLangVersion, require_supported_sglang


def test_another_release_is_refused_naming_the_supported_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sglang_ext, "version", lambda name: "0.5.20")
    with pytest.raises(UnsupportedSGLangVersion) as caught:
        require_supported_sglang()
    assert str(caught.value).startswith("sglang_ext supports SGLang 0.5.17 and 0.5.23, found 0.5.20: "
                                        "pip install 'sglang==0.5.17' or 'sglang==0.5.23'")  # fmt: skip


@pytest.mark.parametrize("installed", ["0.5.17", "0.5.23", "0.5.23+rocm700"])
def test_a_supported_release_loads_as_its_release(monkeypatch: pytest.MonkeyPatch, installed: str) -> None:
    monkeypatch.setattr(sglang_ext, "version", lambda name: installed)
    assert require_supported_sglang() == installed.split("+")[0] and installed.split("+")[0] in SUPPORTED_SGLANG
