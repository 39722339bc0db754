"""Quark INT8 W8A8 and, on CUDA, MXFP4 W4A4 for SGLang 0.5.17 and 0.5.23: linear and MoE schemes, and the hook
that registers them.

These modules subclass SGLang internals, so importing the package checks the release first.
"""

from sglang_ext import require_supported_sglang

require_supported_sglang()
