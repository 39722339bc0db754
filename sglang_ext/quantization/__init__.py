"""Quantization schemes stock SGLang 0.5.17 and 0.5.23 lack.

* :mod:`.quark_int8_spec` - which Quark layer configs are INT8 W8A8 (plain Python).
* :mod:`.int8_fallback` - INT8 W8A8 linear and MoE math in plain torch, for devices without an int8 kernel.
* :mod:`.quark` - the SGLang side: Quark INT8 W8A8 linear and MoE schemes and the hook that registers them
  (imports SGLang and checks its version; the two modules above do not import SGLang, so CI tests them).
"""
