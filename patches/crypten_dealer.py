"""Hooks our dealer-assisted protocols into CrypTen's trusted dealer (reversible).

CrypTen's ``TTPServer`` serves a request by calling the method of that name. ``PATCH``
adds its requests, each a thin adapter from the server's generators to the dealer side of a
protocol that lives beside the protocol:

* ``premask_register`` / ``premask_triple``: fixed masks and (A_t, A_t (op) M) triples
  (``crypten_mpcache.secure.primitives.premask_dealer``);
* ``comparison_material``: the masked comparison (``crypten_mpcache.secure.primitives.comparison``);
* ``onehot_material``: the dealt unit vectors, as words or DPF keys
  (``crypten_mpcache.secure.primitives.onehot_dealer``);
* ``opened_input_material``: one opening of x for its truncations, squares and a later
  product (``crypten_mpcache.secure.primitives.opened_input``).

``TRAFFIC_PATCH`` routes ``TTPClient.ttp_request`` through ``runtime.offline.serve_request``:
recorded in a phase's dry run, served from the material dealt ahead, or fetched now and
tallied by ``runtime.cost.dealer_request`` (so costs split into online and dealer parts).
``response_size`` gives the size of each request's answer from its public arguments (what
the other parties draw as their share). The launcher installs both patches in every party
and in the dealer process, for the lifetime of the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer

from crypten_mpcache.patches import Patch, replace_method
from crypten_mpcache.runtime.offline import serve_request
from crypten_mpcache.secure.primitives import (
    comparison_dealer,
    dcf_dealer,
    onehot_dealer,
    opened_input,
)
from crypten_mpcache.secure.primitives.premask_dealer import MaskStore, Recipe, party0_product_share


def _server_store(server: Any) -> MaskStore:
    """The TTP server's mask store (its ``__init__`` runs the serve loop, so lazily)."""
    store = server.__dict__.get("_premask_store")
    if store is None:
        store = server._premask_store = MaskStore()
    return store


def _premask_register(server: Any, masks: tuple[tuple[int, tuple[int, ...]], ...]
                      ) -> torch.Tensor:
    """Rebuild the masks (id, shape), in order, that the parties drew from the generators
    they share with us."""
    store = _server_store(server)
    for mask_id, size in masks:
        store.register(mask_id, server._get_additive_PRSS(torch.Size(size)))
    return torch.empty(0, dtype=torch.long)


def _premask_triple(server: Any, recipe: Recipe, size_x: tuple[int, ...],
                    op: str, size_out: tuple[int, ...]) -> torch.Tensor:
    """Party 0's share of C = A (op) M (of shape ``size_out``); the parties drew A and the
    other C shares."""
    a = server._get_additive_PRSS(torch.Size(size_x))
    return party0_product_share(
        _server_store(server), op, a, recipe,
        lambda size: server._get_additive_PRSS(size, remove_rank=True))


def _comparison_material(server: Any, n: int, bits: int = comparison_dealer.POSITIONS,
                         width: int = 1) -> torch.Tensor:
    return comparison_dealer.ttp_party0_share(server._get_generators(device=None), int(n),
                                              int(bits), int(width))


def _onehot_material(server: Any, n: int, width: int) -> torch.Tensor:
    return onehot_dealer.ttp_party0_share(server._get_generators(device=None), int(n),
                                          int(width))


def _opened_input_material(server: Any, shape: tuple[int, ...], shifts: tuple[int, ...],
                           partner: tuple[int, ...] | None) -> torch.Tensor:
    return opened_input.ttp_party0_share(server._get_generators(device=None), shape, shifts,
                                         partner)


# Party 1 receives every word of a one-hot dealt as DPF keys (the correction words).
_onehot_material.relay_words = (  # type: ignore[attr-defined]
    lambda n, width: onehot_dealer.relay_words(int(n), int(width)))


def _dcf_material(server: Any, n: int, start: int, count: int, width: int,
                  bits: int = dcf_dealer.BITS) -> torch.Tensor:
    """Batch [start, start + count) of a DCF comparison of n elements with a payload of
    ``width`` words over ``bits`` levels (the server keeps the comparison's mask from its
    first batch to its last)."""
    state = server.__dict__.setdefault("_dcf_state", {})
    return dcf_dealer.ttp_party0_share(state, server._get_generators(device=None),
                                           int(n), int(start), int(count), int(width),
                                           int(bits))


# Party 1 receives the leading words of party 0's answer: the keys' correction words.
_dcf_material.relay_words = (  # type: ignore[attr-defined]
    lambda n, start, count, width, bits=dcf_dealer.BITS:
    dcf_dealer.Layout(int(count), int(width), int(bits)).cw_words)


REQUESTS = {"premask_register": _premask_register,
            "premask_triple": _premask_triple,
            "comparison_material": _comparison_material,
            "onehot_material": _onehot_material,
            "opened_input_material": _opened_input_material,
            "dcf_material": _dcf_material}


def _meta(size: Any) -> torch.Tensor:
    return torch.empty(tuple(size), device="meta")


# The size of each request's answer, from its public arguments: CrypTen's five, then ours.
RESPONSE_SIZES: dict[str, Callable[..., Any]] = {
    "additive": lambda size0, size1, op, *args, **kwargs:
        getattr(torch, op)(_meta(size0), _meta(size1), *args, **kwargs).shape,
    "square": lambda size: size,
    "wraps": lambda size: size,
    "B2A": lambda size: size,
    "binary": lambda size0, size1: torch.broadcast_shapes(tuple(size0), tuple(size1)),
    "premask_register": lambda masks: (0,),
    "premask_triple": lambda recipe, size_x, op, size_out: size_out,
    "comparison_material": lambda n, bits=comparison_dealer.POSITIONS, width=1:
        (comparison_dealer.Layout(int(n), int(bits), int(width)).dependent_size,),
    "onehot_material": lambda n, width:
        (onehot_dealer.Layout(int(n), int(width)).cw_words,)
        if onehot_dealer.Layout(int(n), int(width)).uses_keys else (int(n), int(width)),
    "opened_input_material": lambda shape, shifts, partner:
        (opened_input.Layout(tuple(shape), tuple(shifts),
                             None if partner is None else tuple(partner)).dependent_words,),
    "dcf_material": lambda n, start, count, width, bits=dcf_dealer.BITS:
        (dcf_dealer.Layout(int(count), int(width), int(bits)).party0_words,),
}


def response_size(name: str, args: tuple, kwargs: dict) -> tuple[int, ...]:
    """The shape of the dealer's answer to request ``name``."""
    if name not in RESPONSE_SIZES:
        raise KeyError(f"no size rule for the TTP request {name!r}: add one to "
                       "crypten_mpcache.patches.crypten_dealer.RESPONSE_SIZES")
    return tuple(int(d) for d in RESPONSE_SIZES[name](*args, **kwargs))


def _add_ttp_requests() -> Callable[[], None]:
    added = [name for name in REQUESTS if name not in TTPServer.__dict__]
    for name in added:
        setattr(TTPServer, name, REQUESTS[name])

    def undo() -> None:
        for name in added:
            if TTPServer.__dict__.get(name) is REQUESTS[name]:
                delattr(TTPServer, name)

    return undo


PATCH = Patch("ttp_premask_dealer",
              "TTPServer requests premask_register, premask_triple (fixed masks), "
              "comparison_material (masked comparison) and onehot_material (dealt "
              "unit vectors)",
              _add_ttp_requests)


def _tally_ttp_requests() -> Callable[[], None]:
    client_class = TTPClient._TTPClient__TTPClient   # the singleton's (name-mangled) class

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def ttp_request(self: Any, func_name: str, device: Any, *args: Any,
                        **kwargs: Any) -> Any:
            return serve_request(
                func_name, device, args, kwargs, response_size,
                lambda: original(self, func_name, device, *args, **kwargs))
        return ttp_request

    return replace_method(client_class, "ttp_request", make)


TRAFFIC_PATCH = Patch("ttp_request_route",
                      "TTPClient.ttp_request is recorded in a dry run, served from the "
                      "material dealt ahead, or fetched and tallied as dealer_bytes / "
                      "dealer_rounds / dealer_seconds on the communicator",
                      _tally_ttp_requests)
