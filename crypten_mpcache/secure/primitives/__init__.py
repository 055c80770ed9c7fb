"""Secure primitives on shares: party, fixed point, premasking, comparison, one-hot, reveals.

The bottom layer of ``secure``: imports nothing from ``functions``, ``backend`` or ``cache``.
"""
