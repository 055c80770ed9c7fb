"""Fixed-operand secure products: mask a fixed secret operand once, open only activations.

CrypTen's Beaver product opens both masked operands at every call, so an encrypted weight
(or a KV-cache row) is re-opened at every token. A ``FixedOperand`` draws a mask M for its
value B once, opens D = B - M once, and for each later product x (op) B asks the dealer
for a fresh triple (A_t, C_t = A_t (op) M) and opens only eps = x - A_t:

    [x (op) B] = [C_t] + eps (op) [M] + [A_t] (op) D + eps (op) D

(the public last term is added by party 0 only), then truncates like CrypTen does after a
fixed-point product. ``transpose`` and ``cat`` transform D and the mask shares together
and send the dealer a recipe of the same transformation, so they open nothing. See
``docs/premasking.md`` for the security argument.

``PlainOperand`` has the same interface and uses CrypTen's ordinary Beaver product: the
baseline that re-opens the operand at every call.

Every party must create, transform and use operands in the same order (as with any
CrypTen program). The dealer is CrypTen's configured provider: "TTP" (a separate trusted
process that serves the requests of ``crypten_mpcache.secure.primitives.premask_dealer``; the
launcher installs them) or "TFP" (party 0 deals, with the same ``MaskStore``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import crypten
import crypten.communicator as comm
import torch
from crypten.common.rng import generate_random_ring_element
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.primitives.party import party_rank
from crypten_mpcache.secure.primitives.premask_dealer import (
    AppendCatPool,
    MaskStore,
    Recipe,
    cat_recipe,
    mask_recipe,
    ring_op,
    transpose_recipe,
)

_SESSION_ATTRIBUTE = "_crypten_mpcache_premask_session"


class OperandNameError(ValueError):
    """A fixed operand name was used twice: each name (and mask) masks one value only."""


@dataclass
class _Session:
    """Premask state of one MPC session; lives on the communicator, dies with it."""

    names: set[str] = field(default_factory=set)
    next_mask_id: int = 0
    store: MaskStore = field(default_factory=MaskStore)  # TFP: party 0's plaintext masks
    cats: AppendCatPool = field(default_factory=AppendCatPool)

    def claim(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise OperandNameError("a fixed operand needs a non-empty name")
        if name in self.names:
            raise OperandNameError(f"a fixed operand named {name!r} already exists; a mask "
                                   "is never reused for a different value")
        self.names.add(name)

    def new_mask_id(self) -> int:
        self.next_mask_id += 1
        return self.next_mask_id


def _session() -> _Session:
    communicator = comm.get()
    session = communicator.__dict__.get(_SESSION_ATTRIBUTE)
    if session is None:
        session = _Session()
        setattr(communicator, _SESSION_ATTRIBUTE, session)
    return session


class _Dealer(Protocol):
    def register(self, session: _Session, masks: list[tuple[int, torch.Size]]
                 ) -> list[torch.Tensor]:
        """Draw a fresh mask per (id, shape); return this party's shares of them."""

    def triple(self, session: _Session, recipe: Recipe, x_shape: torch.Size,
               out_shape: torch.Size, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This party's shares of a fresh A (shape of x) and of C = A (op) mask(recipe)."""


class _TrustedThirdParty:
    """Masks and triples from CrypTen's TTP process, derived from the per-party generators
    the TTP shares with each party: only party 0 receives anything (its C share)."""

    @staticmethod
    def _client():  # the TTPClient singleton
        if not hasattr(TTPServer, "premask_triple"):
            raise RuntimeError("the TTP cannot deal premask triples: run the parties with "
                               "crypten_mpcache.launch or run_as_party (they install the "
                               "dealer requests)")
        return TTPClient.get()

    def register(self, session: _Session, masks: list[tuple[int, torch.Size]]
                 ) -> list[torch.Tensor]:
        client = self._client()
        shares = [generate_random_ring_element(shape, generator=client.get_generator())
                  for _, shape in masks]
        if party_rank() == 0:
            request = tuple((mask_id, tuple(shape)) for mask_id, shape in masks)
            client.ttp_request("premask_register", None, request)
        return shares

    def triple(self, session: _Session, recipe: Recipe, x_shape: torch.Size,
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


class _TrustedFirstParty:
    """Party 0 deals: it draws masks and triples and secret-shares them (no traffic with
    CrypTen's pseudo-random zero sharing). Party 0 learns every operand: tests only."""

    @staticmethod
    def _share(tensor: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        return ArithmeticSharedTensor(tensor, size=shape, precision=0, src=0).share

    def register(self, session: _Session, masks: list[tuple[int, torch.Size]]
                 ) -> list[torch.Tensor]:
        shares = []
        for mask_id, shape in masks:
            mask = None
            if party_rank() == 0:
                mask = generate_random_ring_element(shape)
                session.store.register(mask_id, mask)
            shares.append(self._share(mask, shape))
        return shares

    def triple(self, session: _Session, recipe: Recipe, x_shape: torch.Size,
               out_shape: torch.Size, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        a = c = None
        if party_rank() == 0:
            a = generate_random_ring_element(x_shape)
            c = session.store.product(op, a, recipe)
        return self._share(a, x_shape), self._share(c, out_shape)


def _dealer() -> _Dealer:
    provider = crypten.mpc.get_default_provider().NAME
    if provider == "TTP":
        return _TrustedThirdParty()
    if provider == "TFP":
        return _TrustedFirstParty()
    raise ValueError(f"premasking supports the TTP and TFP providers, not {provider!r}")


def _arithmetic(x: MPCTensor) -> ArithmeticSharedTensor:
    if not isinstance(x, MPCTensor):
        raise TypeError(f"expected an MPCTensor, got {type(x).__name__}")
    if x.ptype != crypten.mpc.arithmetic:
        x = x.to(crypten.mpc.arithmetic)
    return x._tensor


def _out_shape(op: str, x_shape: torch.Size, b_shape: torch.Size) -> torch.Size:
    """The shape of x (op) B, with torch's broadcasting (computed without data)."""
    x = torch.empty(x_shape, device="meta")
    b = torch.empty(b_shape, device="meta")
    return getattr(torch, op)(x, b).shape


def _wrap(share: torch.Tensor, encoder: FixedPointEncoder) -> MPCTensor:
    result = MPCTensor.from_shares(share, precision=0)
    result._tensor.encoder = encoder
    return result


class FixedOperand:
    """A secret operand that is fixed across many products; masked and opened once.

    Holds the opened D = B - M and this party's share of M, stacked as ``pair`` (2, *shape)
    so that transposes and concatenations move both together. D is private and never
    written in place: every transformation returns a new view.
    """

    def __init__(self, pair: torch.Tensor, recipe: Recipe, encoder: FixedPointEncoder) -> None:
        self._pair = pair
        self._recipe = recipe
        self._encoder = encoder

    @classmethod
    def create(cls, value: MPCTensor, *, name: str) -> FixedOperand:
        """Mask ``value`` with a fresh mask and open D = value - mask (once)."""
        return cls.create_many([value], names=[name])[0]

    @classmethod
    def create_many(cls, values: list[MPCTensor], *, names: list[str]) -> list[FixedOperand]:
        """Several operands with one dealer request and one opening round (e.g. the new K
        and V rows of every layer that shares a step)."""
        if len(values) != len(names) or not values:
            raise ValueError("create_many needs as many names as values (at least one)")
        session = _session()
        for name in names:
            session.claim(name)
        asts = [_arithmetic(v) for v in values]
        masks = [(session.new_mask_id(), a.share.shape) for a in asts]
        with operator_scope("dealer"):
            mask_shares = _dealer().register(session, masks)
        with operator_scope("premask"):
            masked = [a.share - m for a, m in zip(asts, mask_shares, strict=True)]
            opened = comm.get().all_reduce(masked, batched=True)
        return [cls(torch.stack([d, m]), mask_recipe(mask_id), a.encoder)
                for d, m, (mask_id, _), a in zip(opened, mask_shares, masks, asts, strict=True)]

    @property
    def shape(self) -> torch.Size:
        return self._pair.shape[1:]

    @property
    def recipe(self) -> Recipe:
        """How the dealer rebuilds this operand's mask from registered masks."""
        return self._recipe

    def rmatmul(self, x: MPCTensor) -> MPCTensor:
        """``x @ value`` (batch dims broadcast like ``torch.matmul``); opens x - A only."""
        return self._product(x, "matmul")

    def mul(self, x: MPCTensor) -> MPCTensor:
        """Elementwise ``x * value`` (broadcasting); opens x - A only."""
        return self._product(x, "mul")

    def _product(self, x: MPCTensor, op: str) -> MPCTensor:
        x_ast = _arithmetic(x)
        x_share = x_ast.share
        out_shape = _out_shape(op, x_share.shape, self.shape)
        with operator_scope("dealer"):
            a, c = _dealer().triple(_session(), self._recipe, x_share.shape, out_shape, op)
        eps = comm.get().all_reduce(x_share - a)
        d, mask_share = self._pair[0], self._pair[1]
        z = c + ring_op(op, eps, mask_share) + ring_op(op, a, d)
        if party_rank() == 0:
            z = z + ring_op(op, eps, d)
        return self._rescale(z, x_ast.encoder)

    def _rescale(self, z: torch.Tensor, x_encoder: FixedPointEncoder) -> MPCTensor:
        """z carries scale(x) * scale(B): divide by scale(B) like CrypTen's products."""
        b_scale = self._encoder.scale
        if x_encoder.scale > 1 and b_scale > 1:
            result = _wrap(z, x_encoder)
            result._tensor.div_(b_scale)
            return result
        return _wrap(z, x_encoder if x_encoder.scale > 1 else self._encoder)

    def transpose(self, dim0: int, dim1: int) -> FixedOperand:
        """A view with two dims swapped: same mask, nothing opened."""
        rank = len(self.shape)
        d0, d1 = dim0 % rank, dim1 % rank
        return FixedOperand(self._pair.transpose(d0 + 1, d1 + 1),
                            transpose_recipe(self._recipe, d0, d1), self._encoder)

    @staticmethod
    def cat(operands: list[FixedOperand], dim: int) -> FixedOperand:
        """Concatenation of views (same masks, nothing opened). Growing a list by a few
        operands per call, as ``cat(list + [row])`` or ``cat([previous_result, row])`` (a
        KV cache), copies only the new operands."""
        if not operands:
            raise ValueError("cannot concatenate an empty list of operands")
        if any(not isinstance(o, FixedOperand) for o in operands):
            raise TypeError("FixedOperand.cat takes FixedOperands only")
        scale = operands[0]._encoder.scale
        if any(o._encoder.scale != scale for o in operands):
            raise ValueError("cannot concatenate operands with different encodings")
        d = dim % len(operands[0].shape)
        recipe = cat_recipe(tuple(o._recipe for o in operands), d)
        keys = recipe[2]  # flattened: cat([cache, row]) extends the cache's own parts
        joiner = _session().cats.joiner(d + 1, keys)
        pair = joiner.extend(keys, [o._pair for o in operands])
        return FixedOperand(pair, recipe, operands[0]._encoder)

    def value(self) -> MPCTensor:
        """The secret value again, as shares mask + D (party 0 adds D); no traffic."""
        share = self._pair[1].clone()
        if party_rank() == 0:
            share += self._pair[0]
        return _wrap(share, self._encoder)


class PlainOperand:
    """Same interface as ``FixedOperand`` with CrypTen's ordinary Beaver products, which
    open the operand again at every call (the baseline without premasking)."""

    def __init__(self, value: MPCTensor) -> None:
        self._value = value

    @classmethod
    def create(cls, value: MPCTensor, *, name: str) -> PlainOperand:
        _session().claim(name)
        return cls(value)

    @property
    def shape(self) -> torch.Size:
        return self._value.shape

    def rmatmul(self, x: MPCTensor) -> MPCTensor:
        return x.matmul(self._value)

    def mul(self, x: MPCTensor) -> MPCTensor:
        return x.mul(self._value)

    def transpose(self, dim0: int, dim1: int) -> PlainOperand:
        return PlainOperand(self._value.transpose(dim0, dim1))

    @staticmethod
    def cat(operands: list[PlainOperand], dim: int) -> PlainOperand:
        return PlainOperand(crypten.cat([o._value for o in operands], dim=dim))

    def value(self) -> MPCTensor:
        return self._value


def fixed_operand(value: MPCTensor, *, name: str,
                  premask: bool = True) -> FixedOperand | PlainOperand:
    """A fixed operand: premasked (opened once) or plain (CrypTen's Beaver products)."""
    cls = FixedOperand if premask else PlainOperand
    return cls.create(value, name=name)


def fixed_operands(values: list[MPCTensor], *, names: list[str],
                   premask: bool = True) -> list[FixedOperand] | list[PlainOperand]:
    """Several fixed operands; premasked ones share one dealer request and one opening."""
    if premask:
        return FixedOperand.create_many(values, names=names)
    return [PlainOperand.create(v, name=n) for v, n in zip(values, names, strict=True)]
