"""Explicit, reversible patches of third-party code (``crypten_mpcache.patches``).

``crypten_compat``: CrypTen 0.4.1 on torch 2.x. Model-family modules (one per Hugging
Face family) live beside it.
"""
