"""The masked comparison: bit slicing, the dealer's material, and the protocol under MPC
(equal to CrypTen's comparison bit for bit, far fewer bytes, value-independent cost)."""

from __future__ import annotations

import pytest
import torch

from crypten_mpcache.patches import crypten_comparison
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.primitives import bitslice, comparison_dealer, comparison_tree


def test_pack_unpack_round_trip() -> None:
    bits = torch.randint(0, 2, (3, 130))
    words = bitslice.pack(bits)
    assert words.shape == (3, bitslice.words_for(130)) == (3, 3)
    assert torch.equal(bitslice.unpack(words, 130), bits)
    # lane 63 is the sign bit of the word
    top = torch.zeros(1, 64, dtype=torch.long)
    top[0, 63] = 1
    assert bitslice.pack(top).item() == -(2 ** 63)


def test_packed_bits_round_trip_over_the_whole_ring() -> None:
    values = torch.tensor([0, 1, -1, 2 ** 62, -(2 ** 63), 2 ** 63 - 1, 12345, -98765])
    rows = bitslice.pack_bits_of(values)
    assert rows.shape == (64, 1)
    assert torch.equal(bitslice.value_of_packed(rows, values.numel()), values)
    assert torch.equal(bitslice.unpack(rows[63:], values.numel())[0], (values < 0).long())
    assert torch.equal(bitslice.unpack(rows[:1], values.numel())[0], values & 1)


@pytest.mark.parametrize("bits", [63, 30, 1])
def test_dealt_material_is_consistent(bits: int) -> None:
    """Replay the TTP for 3 parties: the shares reconstruct r from its bits, rho from its
    bit row, and every triple product c = a & b (one tree level per merge count)."""
    n = 100
    layout = comparison_dealer.Layout(n, bits)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    party0 = comparison_dealer.ttp_party0_share(
        [torch.Generator().manual_seed(s) for s in (1, 2, 3)], n, bits)
    frees = [comparison_dealer.draw_free(layout, g) for g in gens[:1]]
    deps = [party0]
    for g in gens[1:]:
        frees.append(comparison_dealer.draw_free(layout, g))
        deps.append(comparison_dealer.draw_dependent(layout, g))
    mats = [comparison_dealer.assemble(layout, f, d) for f, d in zip(frees, deps, strict=True)]

    def xor(tensors):
        out = torch.zeros_like(tensors[0])
        for t in tensors:
            out ^= t
        return out

    r_bits = xor([m.r_bits for m in mats])
    assert torch.equal(sum(m.r for m in mats), bitslice.value_of_packed(r_bits, n))
    rho = bitslice.unpack(xor([m.rho_bits for m in mats]), n)[0]
    assert torch.equal(sum(m.rho for m in mats), rho)
    assert [f for f, _, _ in layout.levels] == {63: [4, 4, 4], 30: [4, 8], 1: []}[bits]
    for level, (f, nodes, root) in enumerate(layout.levels):
        masks = xor([mat.levels[level][0] for mat in mats])
        products = xor([mat.levels[level][1] for mat in mats])
        assert masks.shape == (len(comparison_tree.variables(f, root)), nodes, layout.words)
        assert products.shape == (len(comparison_tree.monomials(f, root)), nodes,
                                  layout.words)
        for slot, subset in enumerate(comparison_tree.monomials(f, root)):
            expected = masks[subset[0]]
            for v in subset[1:]:
                expected = expected & masks[v]
            assert torch.equal(products[slot], expected)


def _compare(values: torch.Tensor) -> dict:
    import crypten
    import crypten.communicator as comm

    x = crypten.cryptensor(values)
    out = {}
    for protocol in ("crypten", "masked"):
        crypten_comparison.use(protocol)
        c = comm.get()
        b0, r0 = c.comm_bytes, c.comm_rounds
        bits = x._ltz()
        out[protocol] = {"bits": bits.get_plain_text(), "bytes": c.comm_bytes - b0,
                         "rounds": c.comm_rounds - r0, "scale": bits.encoder.scale}
    out["relu"] = x.relu().get_plain_text()
    return out


EDGES = torch.tensor([0.0, -2 ** -16, 2 ** -16, -1.0, 1.0, -3.0e4, 3.0e4, -2 ** 40, 2 ** 40])


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_masked_equals_crypten_and_costs_less(dealer: str) -> None:
    torch.manual_seed(0)
    values = torch.cat([EDGES, torch.randn(2000) * 50]).reshape(7, -1)
    results = launch(_compare, values, config=LaunchConfig(dealer=dealer, timeout_s=300))
    expected = (values < 0).double()
    for out in results:
        assert torch.equal(out["masked"]["bits"].double(), expected)
        assert torch.equal(out["crypten"]["bits"].double(), expected)
        assert out["masked"]["scale"] == 1
        assert (out["relu"] - values.clamp(min=0)).abs().max() < 1e-4
    party1 = results[1]
    assert party1["masked"]["bytes"] * 5 < party1["crypten"]["bytes"]
    assert party1["masked"]["rounds"] <= party1["crypten"]["rounds"]


def test_three_parties() -> None:
    torch.manual_seed(1)
    values = torch.cat([EDGES, torch.randn(300) * 10])
    results = launch(_compare, values, config=LaunchConfig(parties=3, dealer="ttp",
                                                           timeout_s=300))
    assert len(results) == 3
    for out in results:
        assert torch.equal(out["masked"]["bits"].double(), (values < 0).double())


def _cost_only(values: torch.Tensor) -> tuple[int, int]:
    import crypten
    import crypten.communicator as comm

    x = crypten.cryptensor(values)
    c = comm.get()
    b0, r0 = c.comm_bytes, c.comm_rounds
    x._ltz()
    return c.comm_bytes - b0, c.comm_rounds - r0


def test_transcript_does_not_depend_on_values() -> None:
    config = LaunchConfig(dealer="ttp", comparison="masked", timeout_s=300)
    first = launch(_cost_only, torch.randn(500) * 1e3, config=config)
    second = launch(_cost_only, -torch.ones(500), config=config)
    assert first == second


def test_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="comparison must be one of"):
        LaunchConfig(comparison="garbled")
    with pytest.raises(ValueError, match="comparison must be one of"):
        crypten_comparison.use("garbled")


def test_positions_outside_the_ring_are_refused() -> None:
    for bits in (0, 64):
        with pytest.raises(ValueError, match="compares 1 to 63 bits"):
            comparison_dealer.Layout(10, bits)


def _bounded(bits: int, count: int = 100, seed: int = 4) -> torch.Tensor:
    """The edges of [-2^bits, 2^bits) (raw units) and random values inside it."""
    edges = [-2 ** bits, -2 ** bits + 1, -1, 0, 1, 2 ** bits - 1, 2 ** bits - 2]
    rand = torch.randint(-2 ** bits, 2 ** bits, (count,),
                         generator=torch.Generator().manual_seed(seed), dtype=torch.long)
    return torch.cat([torch.tensor(edges, dtype=torch.long), rand])


def _narrow_party(values: torch.Tensor, bits: int) -> tuple[list[int], int]:
    """[x < 0] of raw ring values by the masked comparison over ``bits`` positions, and the
    comparison's own rounds."""
    import crypten.communicator as comm
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from crypten_mpcache.secure.primitives import comparison

    share = ArithmeticSharedTensor(values if comm.get().get_rank() == 0 else None,
                                   size=values.shape, precision=0, src=0).share
    before = comm.get().comm_rounds
    bit = comparison.less_than_zero_shares(share, bits=bits)
    rounds = comm.get().comm_rounds - before
    opened = ArithmeticSharedTensor.from_shares(bit, precision=0).reveal()
    return opened.tolist(), rounds


@pytest.mark.parametrize("dealer,parties,bits", [
    ("ttp", 2, 1), ("ttp", 2, 8), ("ttp", 3, 30), ("tfp", 2, 30), ("ttp", 2, 47),
    ("ttp", 2, 63)])
def test_narrow_comparison_is_exact_inside_its_bound(dealer: str, parties: int,
                                                     bits: int) -> None:
    """x in [-2^bits, 2^bits): exact on the bound's edges with a tree round per level (3
    at 47 or 63 bits, 2 at 30, 1 at 8); just outside, the sign is lost (the bound is
    tight)."""
    values = _bounded(min(bits, 62))
    beyond = torch.tensor([2 ** bits, -2 ** bits - 1]) if bits < 63 else torch.tensor([])
    config = LaunchConfig(dealer=dealer, parties=parties, timeout_s=300)
    got, rounds = launch(_narrow_party, torch.cat([values, beyond.long()]), bits,
                         config=config)[0]
    assert got[: values.numel()] == (values < 0).long().tolist()
    if bits < 63:
        assert got[values.numel():] == [1, 0]                       # both signs wrong
    levels = len(comparison_dealer.Layout(1, bits).levels)
    assert levels == {1: 0, 8: 1, 30: 2, 47: 3, 63: 3}[bits]
    ttp = 3 if dealer == "ttp" else 0                       # on demand: the fetch, 3 rounds
    assert rounds == levels + 2 + ttp


def _negative_part_party(values: torch.Tensor, bits: int) -> tuple[list[int], list[int], int]:
    """(z, z x) of raw ring values by the masked comparison's select, and its rounds."""
    import crypten.communicator as comm
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from crypten_mpcache.secure.primitives import comparison

    share = ArithmeticSharedTensor(values if comm.get().get_rank() == 0 else None,
                                   size=values.shape, precision=0, src=0).share
    before = comm.get().comm_rounds
    z, product = comparison.negative_part_shares(share, bits)
    rounds = comm.get().comm_rounds - before
    reveal = [ArithmeticSharedTensor.from_shares(s, precision=0).reveal() for s in (z, product)]
    return reveal[0].tolist(), reveal[1].tolist(), rounds


@pytest.mark.parametrize("dealer,parties,bits", [("ttp", 2, 30), ("ttp", 3, 63),
                                                 ("tfp", 2, 8)])
def test_negative_part_costs_no_round_beyond_the_comparison(dealer: str, parties: int,
                                                            bits: int) -> None:
    """z = [x < 0] and z x exact in the ring (x full-width raw values inside the bound),
    in the comparison's own rounds: the dealt rho r replaces the select's product."""
    values = _bounded(min(bits, 62))
    config = LaunchConfig(dealer=dealer, parties=parties, timeout_s=300)
    z, product, rounds = launch(_negative_part_party, values, bits, config=config)[0]
    assert z == (values < 0).long().tolist()
    assert product == torch.where(values < 0, values, 0 * values).tolist()
    ttp = 3 if dealer == "ttp" else 0
    assert rounds == len(comparison_dealer.Layout(1, bits).levels) + 2 + ttp


@pytest.mark.parametrize("f,root", [(2, False), (4, False), (4, True), (8, True)])
def test_a_tree_node_merges_every_input_in_one_opening(f: int, root: bool) -> None:
    """Exhaustive over each child's (lt, eq) in {(0,0), (1,0), (0,1)}, two parties in
    plaintext: the node's (lt, eq) (lt alone at the root) from one opening of the masked
    variables equals the comparison of the concatenated positions."""
    import itertools

    states = list(itertools.product([(0, 0), (1, 0), (0, 1)], repeat=f))   # (lt, eq)
    nodes = len(states)
    lt = torch.tensor([[s[j][0] for s in states] for j in range(f)])      # (f, nodes)
    eq = torch.tensor([[s[j][1] for s in states] for j in range(f)])
    # positions lowest first, one node per lane: a row per child, the node's lanes packed
    lt_rows, eq_rows = bitslice.pack(lt), bitslice.pack(eq)              # (f, W)
    g = torch.Generator().manual_seed(5)
    words = lt_rows.shape[1]

    def split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randint(-2 ** 62, 2 ** 62, rows.shape, generator=g)
        return noise, rows ^ noise

    v, mono = len(comparison_tree.variables(f, root)), len(comparison_tree.monomials(f, root))
    masks = torch.randint(-2 ** 62, 2 ** 62, (v, 1, words), generator=g)
    products = comparison_tree.products(f, root, masks)
    masks_sh, products_sh = split(masks), split(products)
    lt_sh, eq_sh = split(lt_rows), split(eq_rows)
    variables = [comparison_tree.node_variables(f, root, lt_sh[p], eq_sh[p]) for p in (0, 1)]
    opened = (variables[0][0] ^ masks_sh[0]) ^ (variables[1][0] ^ masks_sh[1])
    out = [comparison_tree.evaluate(f, root, variables[p][1], opened, masks_sh[p],
                                    products_sh[p], p == 0) for p in (0, 1)]
    got_lt = bitslice.unpack(out[0][0] ^ out[1][0], nodes)[0]
    got_eq = bitslice.unpack(out[0][1] ^ out[1][1], nodes)[0]
    for k, state in enumerate(states):
        expected_lt, expected_eq = 0, 1
        for child_lt, child_eq in state:                 # lowest child first
            expected_lt = child_lt | (child_eq & expected_lt)
            expected_eq &= child_eq
        assert got_lt[k].item() == expected_lt, state
        assert root or got_eq[k].item() == expected_eq, state
    assert mono == {(2, False): 2, (4, False): 22, (4, True): 15, (8, True): 367}[f, root]
