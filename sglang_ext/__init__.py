"""Additions to SGLang for serving quantized Qwen3.5/Qwen3.6 MoE checkpoints, without forking SGLang.

SGLang loads them through its external-model hook: the launcher sets
`SGLANG_EXTERNAL_MODEL_PACKAGE=sglang_ext.models`, and SGLang imports that package in every server process
(docs/extending-sglang.md). Overrides patch SGLang internals, so they refuse to load on a release they were
not checked against; where two supported releases differ, the code says which does what
(docs/extending-sglang.md, "Per release").
"""

from importlib.metadata import PackageNotFoundError, version

# The SGLang releases sglang_ext is built for, and how far this project has proven each (README, "Verified on").
SUPPORTED_SGLANG = {
    "0.5.17": "served on NVIDIA H100/H200 by this project's GPU suites",
    "0.5.23": "tested on CPU only (its loaders, schemes and option parser); not yet served on a GPU here, "
              "whose hosts have torch 2.11 where SGLang 0.5.23 needs torch 2.14",
}  # fmt: skip


class UnsupportedSGLangVersion(RuntimeError):
    pass


def supported_list() -> str:
    return " and ".join(SUPPORTED_SGLANG)


def require_supported_sglang() -> str:
    """The installed SGLang version; raises with the fix when sglang_ext was not built for it."""
    try:
        installed = version("sglang")
    except PackageNotFoundError:
        raise UnsupportedSGLangVersion("sglang_ext needs SGLang, which is not installed") from None
    release = installed.split("+")[0]
    if release not in SUPPORTED_SGLANG:
        raise UnsupportedSGLangVersion(
            f"sglang_ext supports SGLang {supported_list()}, found {installed}: pip install "
            + " or ".join(f"'sglang=={v}'" for v in SUPPORTED_SGLANG)
            + ", or unset SGLANG_EXTERNAL_MODEL_PACKAGE to run stock SGLang"
        )
    return release
