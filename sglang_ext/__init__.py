"""Additions to SGLang for serving quantized Qwen3.5/Qwen3.6 MoE checkpoints, without forking SGLang.

SGLang loads them through its external-model hook: the launcher sets
`SGLANG_EXTERNAL_MODEL_PACKAGE=sglang_ext.models`, and SGLang imports that package in every server process
(docs/extending-sglang.md). Overrides patch SGLang internals of one version, so they refuse to load on any
other.
"""

from importlib.metadata import PackageNotFoundError, version

BUILT_FOR_SGLANG = ("0.5.17",)


class UnsupportedSGLangVersion(RuntimeError):
    pass


def require_supported_sglang() -> str:
    """The installed SGLang version; raises with the fix when sglang_ext was not built for it."""
    try:
        installed = version("sglang")
    except PackageNotFoundError:
        raise UnsupportedSGLangVersion("sglang_ext needs SGLang, which is not installed") from None
    if installed.split("+")[0] not in BUILT_FOR_SGLANG:
        raise UnsupportedSGLangVersion(
            f"sglang_ext was built for SGLang {', '.join(BUILT_FOR_SGLANG)}, found {installed}: "
            f"pip install 'sglang=={BUILT_FOR_SGLANG[-1]}', or unset SGLANG_EXTERNAL_MODEL_PACKAGE to run stock SGLang"
        )
    return installed
