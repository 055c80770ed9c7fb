"""Secure functions on the primitives: RMSNorm, SiLU, softmax, argmax, table lookups, top-k.

Imports ``secure.primitives`` (and ``runtime``, ``algorithm``) only.
"""
