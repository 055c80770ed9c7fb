"""The encrypted KV cache and the policies that decide what attention reads.

The top layer of ``secure``: may import the primitives, the functions and the backend.
"""
