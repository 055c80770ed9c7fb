"""``crypten-mpcache bench``: the MPC cost of a decode step, full cache vs MPCache.

- ``shapes``: real layer dimensions (SmolLM2-135M, Llama-2-7B, Llama-3-8B) as LlamaConfigs.
- ``variants``: the cache variants compared (full, mpcache and its ablations).
- ``runner``: one MPC run per (context, cache): random encrypted weights and KV cache,
  one-time static eviction, decode steps measured by a ``CostMeter``.
- ``report`` / ``plot``: the side-by-side table with full/mpcache ratios, LAN/WAN latency.
- ``cli``: the ``bench`` subcommand's arguments and entry point.
"""
