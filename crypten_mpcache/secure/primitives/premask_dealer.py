"""The dealer side of premasking: fixed masks and the masks of operands derived from them.

CrypTen's dealers only hand out triples (a, b, a*b) with a fresh b every time, so a fixed
operand (a weight, a cached key) is re-masked and re-opened at every product. Premasking
(``crypten_mpcache.secure.primitives.premask``) masks a fixed operand B once with a
registered mask M and later asks the dealer for (A_t, A_t (op) M') where M' is M or a view
of several registered masks (transposes, concatenations). The dealer learns nothing new: it already
knows every mask and triple it deals.

* a *recipe* (plain nested tuples, small and picklable through CrypTen's restricted
  unpickler) names the mask of a derived operand:
  ``("mask", id)``, ``("transpose", dim0, dim1, child)``, ``("cat", dim, (child, ...))``.
* ``AppendCat``: a concatenation whose result grows in place when the list of parts only
  grows (a KV cache gets one row per decode step), so each step costs O(new rows).
* ``MaskStore``: the dealer's plaintext masks (refuses to register an id twice) and the
  products ``A (op) build(recipe)``. The TTP (``crypten_mpcache.patches.crypten_dealer``
  hooks it into CrypTen's ``TTPServer``) and the TFP dealer (party 0) use it.
* ``party_dealer``: what a party asks of the configured provider (``TTPDealer``: the
  TTP process; ``TFPDealer``: party 0 deals, tests only).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

import crypten
import torch
from crypten.common.rng import generate_random_ring_element
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer

from crypten_mpcache.secure.primitives.party import party_rank

Recipe = tuple
OPS = ("matmul", "mul")


class MaskReuseError(RuntimeError):
    """A mask id was registered twice: reusing a mask for another value leaks B - B'."""


def mask_recipe(mask_id: int) -> Recipe:
    return ("mask", int(mask_id))


def transpose_recipe(child: Recipe, dim0: int, dim1: int) -> Recipe:
    return ("transpose", int(dim0), int(dim1), child)


def cat_recipe(children: tuple[Recipe, ...], dim: int) -> Recipe:
    """A concatenation, flattened: a child that is itself a cat along ``dim`` contributes
    its children, so a cache grown by ``cat([cache, row])`` stays one flat node."""
    return ("cat", int(dim), cat_children(children, dim))


def cat_children(children: tuple[Recipe, ...], dim: int) -> tuple[Recipe, ...]:
    flat: list[Recipe] = []
    for child in children:
        if child[0] == "cat" and child[1] == dim:
            flat.extend(child[2])
        else:
            flat.append(child)
    return tuple(flat)


class AppendCat:
    """``torch.cat(parts, dim)`` that appends in place when the keyed list only grows.

    Views handed out earlier stay valid: only the region past the longest view handed out
    is ever written, and a list that is not an extension of the previous one gets a fresh
    buffer.
    """

    def __init__(self, dim: int) -> None:
        self._dim = dim
        self._keys: tuple[Hashable, ...] = ()
        self._buffer: torch.Tensor | None = None
        self._length = 0

    def cat(self, keys: tuple[Hashable, ...],
            part: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """The concatenation of ``part(i)`` for each index of ``keys`` (which name them);
        only the parts past the cached prefix are materialized."""
        for i in range(self._cached_prefix(keys), len(keys)):
            self._append(part(i))
        return self._finish(keys)

    def extend(self, keys: tuple[Hashable, ...],
               segments: Sequence[torch.Tensor]) -> torch.Tensor:
        """The concatenation of ``segments``, which hold the parts named by ``keys`` in
        order (a segment may hold several, e.g. an earlier result); only the rows past the
        cached prefix are copied."""
        self._cached_prefix(keys)
        covered, start = self._length, 0
        for segment in segments:
            dim = self._dim_of(segment)
            rows = segment.shape[dim]
            if start + rows > covered:
                skip = max(0, covered - start)
                self._append(segment.narrow(dim, skip, rows - skip))
            start += rows
        return self._finish(keys)

    def parts(self) -> int:
        return len(self._keys)

    def holds_prefix_of(self, keys: tuple[Hashable, ...]) -> bool:
        return self._buffer is not None and keys[:len(self._keys)] == self._keys

    def _cached_prefix(self, keys: tuple[Hashable, ...]) -> int:
        """How many leading parts the buffer already holds (0 after a reset)."""
        if not keys:
            raise ValueError("cannot concatenate an empty list")
        n = len(self._keys)
        if self._buffer is None or keys[:n] != self._keys:
            self._buffer, self._length, self._keys = None, 0, ()
            return 0
        return n

    def _finish(self, keys: tuple[Hashable, ...]) -> torch.Tensor:
        self._keys = tuple(keys)
        return self._buffer.narrow(self._dim_of(self._buffer), 0, self._length)

    def _dim_of(self, tensor: torch.Tensor) -> int:
        return self._dim % tensor.dim()

    def _append(self, part: torch.Tensor) -> None:
        dim = self._dim_of(part)
        size = part.shape[dim]
        capacity = 0 if self._buffer is None else self._buffer.shape[dim]
        if self._buffer is not None and _without(self._buffer.shape, dim) != \
                _without(part.shape, dim):
            raise ValueError(f"cannot concatenate {tuple(part.shape)} to "
                             f"{tuple(self._buffer.shape)} along dim {dim}")
        if self._length + size > capacity:
            shape = list(part.shape)
            shape[dim] = 2 * (self._length + size)  # doubling: amortized O(1) per row
            grown = part.new_empty(shape)
            if self._buffer is not None:
                kept = self._buffer.narrow(dim, 0, self._length)
                grown.narrow(dim, 0, self._length).copy_(kept)
            self._buffer = grown
        self._buffer.narrow(dim, self._length, size).copy_(part)
        self._length += size


class AppendCatPool:
    """Growing buffers keyed by (dim, first part), least recently used first out.

    Up to ``per_key`` buffers per key, so concatenations that start alike but grow
    differently (the whole KV cache, a selection from it) do not evict each other; at most
    ``total`` buffers overall, so buffers of operands that are gone (a cache compacted by
    eviction) are dropped eventually.
    """

    def __init__(self, per_key: int = 4, total: int = 512) -> None:
        if not 1 <= per_key <= total:
            raise ValueError("need 1 <= per_key <= total")
        self._per_key, self._total = per_key, total
        self._lru: OrderedDict[int, tuple[tuple[int, Hashable], AppendCat]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def joiner(self, dim: int, keys: tuple[Hashable, ...]) -> AppendCat:
        """The buffer that already holds the longest prefix of ``keys`` (or a fresh one)."""
        key = (dim, keys[0])
        same = [j for k, j in self._lru.values() if k == key]
        holding = [j for j in same if j.holds_prefix_of(keys)]
        if holding:
            best = max(holding, key=AppendCat.parts)
            self._lru.move_to_end(id(best))
            return best
        if len(same) >= self._per_key:
            del self._lru[id(same[0])]  # the least recently used of this key
        best = AppendCat(dim)
        self._lru[id(best)] = (key, best)
        if len(self._lru) > self._total:
            self._lru.popitem(last=False)
        return best


def ring_op(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (op) b`` on ring (int64) tensors. torch's integer matmul is a plain loop that
    is several times slower when a matrix ``b`` is a transposed view (an LM head over a
    tied embedding), so such products run as ``(b^T a^T)^T`` on the dense layout (torch's
    batched kernel handles transposed batches well: those are left alone)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if op == "matmul" and a.dim() >= 1 and b.dim() == 2 and _column_major(b):
        rows = a.reshape(-1, a.size(-1))
        return torch.matmul(b.mT, rows.mT).mT.reshape(*a.shape[:-1], b.size(-1))
    return getattr(torch, op)(a, b)


def _column_major(t: torch.Tensor) -> bool:
    """True when the last two dims of ``t`` are a transposed dense (row-major) matrix."""
    return t.dim() >= 2 and t.size(-1) > 1 and t.stride(-2) == 1 and \
        t.stride(-1) == t.size(-2)


def _without(shape: torch.Size, dim: int) -> tuple[int, ...]:
    return tuple(shape[:dim]) + tuple(shape[dim + 1:])


class MaskStore:
    """The dealer's plaintext masks, and the mask of any recipe built from them."""

    def __init__(self) -> None:
        self._masks: dict[int, torch.Tensor] = {}
        self._cats = AppendCatPool()

    def __contains__(self, mask_id: int) -> bool:
        return mask_id in self._masks

    def register(self, mask_id: int, mask: torch.Tensor) -> None:
        if mask_id in self._masks:
            raise MaskReuseError(f"mask {mask_id} is already registered; a mask masks one "
                                 "value only")
        self._masks[mask_id] = mask

    def build(self, recipe: Recipe) -> torch.Tensor:
        """The (plaintext) mask that ``recipe`` names."""
        kind = recipe[0]
        if kind == "mask":
            if recipe[1] not in self._masks:
                raise KeyError(f"mask {recipe[1]} was never registered")
            return self._masks[recipe[1]]
        if kind == "transpose":
            _, dim0, dim1, child = recipe
            return self.build(child).transpose(dim0, dim1)
        if kind == "cat":
            _, dim, children = recipe
            joiner = self._cats.joiner(dim, children)
            return joiner.cat(children, lambda i: self.build(children[i]))
        raise ValueError(f"unknown recipe node {kind!r}")

    def product(self, op: str, a: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        """``a (op) M`` for the mask M that ``recipe`` names (ring arithmetic)."""
        return ring_op(op, a, self.build(recipe))


def party0_product_share(store: MaskStore, op: str, a: torch.Tensor, recipe: Recipe,
                         others: Callable[[torch.Size], torch.Tensor]) -> torch.Tensor:
    """Party 0's share of C = a (op) M when every other party draws its own share
    (``others(size)``: the sum of those shares, replayed by the dealer)."""
    c = store.product(op, a, recipe)
    return c - others(c.size())


class PartyDealer(Protocol):
    """Where a party gets its mask shares and premask triples (the configured provider)."""

    def register(self, store: MaskStore, masks: list[tuple[int, torch.Size]]
                 ) -> list[torch.Tensor]:
        """Draw a fresh mask per (id, shape); return this party's shares of them."""

    def triple(self, store: MaskStore, recipe: Recipe, x_shape: torch.Size,
               out_shape: torch.Size, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This party's shares of a fresh A (shape of x) and of C = A (op) mask(recipe)."""


class TTPDealer:
    """Masks and triples from CrypTen's TTP process, derived from the per-party generators
    the TTP shares with each party: only party 0 receives anything (its C share)."""

    @staticmethod
    def _client():  # the TTPClient singleton
        if not hasattr(TTPServer, "premask_triple"):
            raise RuntimeError("the TTP cannot deal premask triples: run the parties with "
                               "crypten_mpcache.launch or run_as_party (they install the "
                               "dealer requests)")
        return TTPClient.get()

    def register(self, store: MaskStore, masks: list[tuple[int, torch.Size]]
                 ) -> list[torch.Tensor]:
        client = self._client()
        shares = [generate_random_ring_element(shape, generator=client.get_generator())
                  for _, shape in masks]
        if party_rank() == 0:
            request = tuple((mask_id, tuple(shape)) for mask_id, shape in masks)
            client.ttp_request("premask_register", None, request)
        return shares

    def triple(self, store: MaskStore, recipe: Recipe, x_shape: torch.Size,
               out_shape: torch.Size, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        client = self._client()
        generator = client.get_generator()
        a = generate_random_ring_element(x_shape, generator=generator)
        if party_rank() == 0:
            c = client.ttp_request("premask_triple", None, recipe, tuple(x_shape), op,
                                       tuple(out_shape))
        else:
            c = generate_random_ring_element(out_shape, generator=generator)
        return a, c


class TFPDealer:
    """Party 0 deals: it draws masks and triples and secret-shares them (no traffic with
    CrypTen's pseudo-random zero sharing). Party 0 learns every operand: tests only."""

    @staticmethod
    def _share(tensor: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        return ArithmeticSharedTensor(tensor, size=shape, precision=0, src=0).share

    def register(self, store: MaskStore, masks: list[tuple[int, torch.Size]]
                 ) -> list[torch.Tensor]:
        shares = []
        for mask_id, shape in masks:
            mask = None
            if party_rank() == 0:
                mask = generate_random_ring_element(shape)
                store.register(mask_id, mask)
            shares.append(self._share(mask, shape))
        return shares

    def triple(self, store: MaskStore, recipe: Recipe, x_shape: torch.Size,
               out_shape: torch.Size, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        a = c = None
        if party_rank() == 0:
            a = generate_random_ring_element(x_shape)
            c = store.product(op, a, recipe)
        return self._share(a, x_shape), self._share(c, out_shape)


def party_dealer() -> PartyDealer:
    provider = crypten.mpc.get_default_provider().NAME
    if provider == "TTP":
        return TTPDealer()
    if provider == "TFP":
        return TFPDealer()
    raise ValueError(f"premasking supports the TTP and TFP providers, not {provider!r}")
