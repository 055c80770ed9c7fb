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
launcher installs them) or "TFP" (party 0 deals, with the same ``MaskStore``); a party
asks it through ``premask_dealer.party_dealer``.

``product_pending`` leaves a product's one opening to ``openings.open_together``, so
products that need only x (a step's cluster scores and its attention scores, both of the
query) share one round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import crypten
import crypten.communicator as comm
import torch
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.primitives.deferred_opening import DeferredOpening, still_pending
from crypten_mpcache.secure.primitives.openings import (
    Pending,
    nothing_to_open,
    open_alone,
    then,
    together,
)
from crypten_mpcache.secure.primitives.party import party_rank
from crypten_mpcache.secure.primitives.premask_dealer import (
    AppendCatPool,
    MaskStore,
    Recipe,
    cat_recipe,
    mask_recipe,
    party_dealer,
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
    so that transposes and concatenations move both together. D is private and written
    once, by its opening (deferred: zeros until then); every transformation returns a
    new view.
    """

    def __init__(self, pair: torch.Tensor, recipe: Recipe, encoder: FixedPointEncoder,
                 openings: tuple[DeferredOpening, ...] = ()) -> None:
        self._pair = pair
        self._recipe = recipe
        self._encoder = encoder
        self._openings = still_pending(openings)  # D's deferred openings (deferred_opening)

    @classmethod
    def create(cls, value: MPCTensor, *, name: str) -> FixedOperand:
        """Mask ``value`` with a fresh mask and open D = value - mask (once)."""
        return cls.create_many([value], names=[name])[0]

    @classmethod
    def create_many(cls, values: list[MPCTensor], *, names: list[str],
                    deferred: bool = False) -> list[FixedOperand]:
        """Several operands with one dealer request and one opening round (e.g. the new K
        and V rows of every layer that shares a step). ``deferred``: that round is the
        first product's with any of them (``deferred_opening``)."""
        if len(values) != len(names) or not values:
            raise ValueError("create_many needs as many names as values (at least one)")
        session = _session()
        for name in names:
            session.claim(name)
        asts = [_arithmetic(v) for v in values]
        masks = [(session.new_mask_id(), a.share.shape) for a in asts]
        with operator_scope("dealer"):
            mask_shares = party_dealer().register(session.store, masks)
        pairs = [torch.stack([torch.zeros_like(m), m]) for m in mask_shares]
        opening = DeferredOpening.of([p[0] for p in pairs],
                                     [a.share - m for a, m in zip(asts, mask_shares, strict=True)])
        operands = [cls(pair, mask_recipe(mask_id), a.encoder, (opening,))
                    for pair, (mask_id, _), a in zip(pairs, masks, asts, strict=True)]
        if not deferred:
            open_alone(opening.take())
        return operands

    def _taken(self) -> list[Pending[None]]:
        """The deferred openings this operand's next use must run (each once)."""
        return [p for p in (o.take() for o in self._openings) if p is not None]

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

    def rmatmul_pending(self, x: MPCTensor) -> Pending[MPCTensor]:
        """``rmatmul`` with its opening left to ``openings.run_together``."""
        return self.product_pending(x, "matmul")

    def _product(self, x: MPCTensor, op: str) -> MPCTensor:
        return open_alone(self.product_pending(x, op))

    def product_pending(self, x: MPCTensor, op: str) -> Pending[MPCTensor]:
        """``x (op) value`` ("matmul" or "mul") with its one opening, eps = x - A, left to
        ``openings.open_together``: products that need only x share a round."""
        x_ast = _arithmetic(x)
        x_share = x_ast.share
        out_shape = _out_shape(op, x_share.shape, self.shape)
        with operator_scope("dealer"):
            a, c = party_dealer().triple(_session().store, self._recipe, x_share.shape,
                                         out_shape, op)
        d, mask_share = self._pair[0], self._pair[1]
        openings = self._taken()    # D opens in this product's round, finished first

        def finish(eps: torch.Tensor) -> MPCTensor:
            self._check_opened()
            eps = eps.reshape(x_share.shape)
            z = c + ring_op(op, eps, mask_share) + ring_op(op, a, d)
            if party_rank() == 0:
                z = z + ring_op(op, eps, d)
            return self._rescale(z, x_ast.encoder)

        product = Pending(x_share - a, finish)
        if not openings:
            return product
        return then(together(*openings, product), lambda results: results[-1])

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
                            transpose_recipe(self._recipe, d0, d1), self._encoder,
                            self._openings)

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
        offset, openings = 0, []
        for o in operands:
            size = o.shape[d]
            for opening in still_pending(o._openings):  # its D reaches this copy later
                opening.copy_to(pair[0].narrow(d, offset, size), o._pair[0])
                openings.append(opening)
            offset += size
        return FixedOperand(pair, recipe, operands[0]._encoder, tuple(dict.fromkeys(openings)))

    def _check_opened(self) -> None:
        if still_pending(self._openings):
            raise RuntimeError("a premasked operand was used before its opening")

    def open_now(self) -> None:
        """Run the deferred openings of D that no product has taken (one round, alone)."""
        for pending in self._taken():
            open_alone(pending)

    def value(self) -> MPCTensor:
        """The secret value again, as shares mask + D (party 0 adds D); no traffic once
        D is open (a deferred opening not taken yet runs here, alone)."""
        self.open_now()
        self._check_opened()
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

    def open_now(self) -> None:
        """Nothing is deferred: CrypTen's products open the operand every time."""

    def product_pending(self, x: MPCTensor, op: str) -> Pending[MPCTensor]:
        """CrypTen's product, run whole after the others' opening (no round saved)."""
        return nothing_to_open(lambda: getattr(x, op)(self._value))

    def rmatmul_pending(self, x: MPCTensor) -> Pending[MPCTensor]:
        return self.product_pending(x, "matmul")

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


def fixed_operands(values: list[MPCTensor], *, names: list[str], premask: bool = True,
                   deferred: bool = False) -> list[FixedOperand] | list[PlainOperand]:
    """Several fixed operands; premasked ones share one dealer request and one opening
    (``deferred``: the round of their first product, ``deferred_opening``)."""
    if premask:
        return FixedOperand.create_many(values, names=names, deferred=deferred)
    return [PlainOperand.create(v, name=n) for v, n in zip(values, names, strict=True)]
