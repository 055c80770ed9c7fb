"""Cross-layer index sharing: which layer's selection each layer uses.

Adjacent layers select almost the same clusters (>80% overlap in the paper), so the
authors let the first ``alone_head`` and last ``alone_tail`` layers select on their own
and, in between, layer 2i selects while layer 2i+1 reuses it (static and dynamic). A
dense layer never selects, so a layer after a dense one selects on its own.
"""

from __future__ import annotations


def selector_layer(
    layer: int,
    n_layers: int,
    share: bool = True,
    alone_head: int = 2,
    alone_tail: int = 2,
    dense_layers: tuple[int, ...] = (),
) -> int:
    """The layer whose selection ``layer`` applies (itself when it selects)."""
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range for {n_layers} layers")
    if not share or layer < alone_head or layer >= n_layers - alone_tail:
        return layer
    if layer % 2 == 1 and layer - 1 >= alone_head and (layer - 1) not in dense_layers:
        return layer - 1
    return layer


def sharing_schedule(
    n_layers: int,
    share: bool = True,
    alone_head: int = 2,
    alone_tail: int = 2,
    dense_layers: tuple[int, ...] = (),
) -> tuple[int, ...]:
    """``schedule[l]`` = the layer whose selection layer ``l`` uses."""
    return tuple(
        selector_layer(i, n_layers, share, alone_head, alone_tail, dense_layers)
        for i in range(n_layers)
    )
