"""Secure inference on CrypTen, in layers: primitives, functions, the backend, the cache.

``primitives``: protocols on shares (party, fixed point, premasked products, the masked
comparison, the dealt one-hot, reveals); ``functions``: nonlinear functions and top-k built
on them; ``backend``: the algorithm's ``Backend`` on MPCTensors; ``cache``: the encrypted KV
cache and its policies. Each layer imports only the layers listed before it.
"""
