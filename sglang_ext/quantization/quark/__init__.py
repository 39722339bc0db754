"""Quark INT8 W8A8 for SGLang 0.5.17: linear and MoE schemes, and the hook that registers them.

These modules subclass SGLang internals of one version, so importing the package checks it first.
"""

from sglang_ext import require_supported_sglang

require_supported_sglang()
