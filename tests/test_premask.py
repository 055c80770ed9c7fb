"""Premasking: products with a fixed operand are correct, open only the fresh operand, and
have a transcript that does not depend on the secret values."""

from __future__ import annotations

import sys

import pytest
import torch

from crypten_mpcache.patches import crypten_dealer
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.primitives import premask
from crypten_mpcache.secure.primitives.premask_dealer import (
    AppendCat,
    AppendCatPool,
    MaskReuseError,
    MaskStore,
    cat_recipe,
    mask_recipe,
    ring_op,
    transpose_recipe,
)

CONFIGS = [(2, "ttp"), (2, "tfp"), (3, "ttp"), (3, "tfp")]
TOL = 2e-3


# ---------------------------------------------------------------- dealer-side units


def test_append_cat_grows_in_place_and_keeps_old_views():
    joiner = AppendCat(dim=1)
    parts = [torch.full((2, 1, 3), float(i)) for i in range(24)]
    views, buffers = [], set()
    for n in range(1, len(parts) + 1):  # one row more per call, like a KV cache
        views.append(joiner.cat(tuple(range(n)), lambda i: parts[i]))
        buffers.add(views[-1].untyped_storage().data_ptr())
    assert len(buffers) <= 5  # capacity doubles: O(log n) reallocations, else in place
    for n, view in enumerate(views, start=1):  # views handed out earlier are untouched
        assert torch.equal(view, torch.cat(parts[:n], dim=1))
    keys = (0, 4)
    branch = joiner.cat(keys, lambda i: parts[keys[i]])  # not an extension: fresh buffer
    assert torch.equal(branch, torch.cat([parts[0], parts[4]], dim=1))
    assert torch.equal(views[-1], torch.cat(parts, dim=1))


def test_append_cat_extend_copies_only_new_rows():
    joiner = AppendCat(dim=-2)
    rows = [torch.full((2, 1, 3), float(i)) for i in range(10)]
    result = joiner.extend((0,), [rows[0]])
    for n in range(1, len(rows)):  # cat([previous result, new row]), like a cache layer
        result = joiner.extend(tuple(range(n + 1)), [result, rows[n]])
        assert torch.equal(result, torch.cat(rows[: n + 1], dim=-2))
    mixed = joiner.extend(tuple(range(12)), [result[:, :4], result[:, 4:], rows[0], rows[1]])
    assert torch.equal(mixed, torch.cat([*rows, rows[0], rows[1]], dim=-2))


def test_append_cat_pool_keeps_alternating_concatenations_apart():
    pool = AppendCatPool(per_key=2)
    rows = {i: torch.full((1, 2), float(i)) for i in range(40)}
    cache_keys, selection_keys = (0,), (0, 30)
    pointers = {"cache": set(), "selection": set()}
    for step in range(1, 12):  # the cache grows; a selection starting at row 0 alternates
        cache_keys += (step,)
        selection_keys += (30 + step % 8,) if step < 8 else ()
        for label, keys in (("cache", cache_keys), ("selection", selection_keys)):
            out = pool.joiner(0, keys).cat(keys, lambda i, keys=keys: rows[keys[i]])
            assert torch.equal(out, torch.cat([rows[k] for k in keys]))
            pointers[label].add(out.untyped_storage().data_ptr())
    assert len(pointers["cache"]) <= 4 and len(pointers["selection"]) <= 4  # no thrashing
    assert len(pool) == 2
    small = AppendCatPool(per_key=1, total=3)
    for first in range(5):  # operands that are gone (compacted caches) age out
        small.joiner(0, (first, 99)).cat((first, 99), lambda i: rows[i])
    assert len(small) == 3


def test_cat_recipes_are_flat():
    a, b, c = (mask_recipe(i) for i in (1, 2, 3))
    nested = cat_recipe((cat_recipe((a, b), 1), c), 1)
    assert nested == ("cat", 1, (a, b, c))
    other_dim = cat_recipe((cat_recipe((a, b), 0), c), 1)
    assert other_dim == ("cat", 1, (("cat", 0, (a, b)), c))


def test_append_cat_rejects_mismatched_parts():
    joiner = AppendCat(dim=0)
    parts = [torch.zeros(1, 3), torch.zeros(1, 1)]
    with pytest.raises(ValueError, match="cannot concatenate"):
        joiner.cat((0, 1), lambda i: parts[i])


def test_mask_store_builds_recipes_and_refuses_reuse():
    store = MaskStore()
    masks = {i: torch.randint(-100, 100, (2, 1, 4)) for i in (1, 2, 3)}
    for mask_id, mask in masks.items():
        store.register(mask_id, mask)
    with pytest.raises(MaskReuseError):
        store.register(2, torch.zeros(2, 1, 4, dtype=torch.long))
    recipe = transpose_recipe(cat_recipe(tuple(mask_recipe(i) for i in (1, 2, 3)), 1), 1, 2)
    expected = torch.cat([masks[1], masks[2], masks[3]], dim=1).transpose(1, 2)
    assert torch.equal(store.build(recipe), expected)
    a = torch.randint(-100, 100, (2, 5, 3))
    assert torch.equal(store.product("matmul", a, recipe[3]),
                       torch.matmul(a, torch.cat(list(masks.values()), dim=1)))
    with pytest.raises(KeyError):
        store.build(mask_recipe(9))


@pytest.mark.parametrize("x_shape", [(1, 7), (1, 1, 7), (2, 3, 7), (7,)])
def test_ring_matmul_with_transposed_operand_is_exact(x_shape):
    gen = torch.Generator().manual_seed(1)
    e = torch.randint(-(2**62), 2**62, (11, 7), generator=gen)  # wraps around the ring
    x = torch.randint(-(2**62), 2**62, x_shape, generator=gen)
    assert torch.equal(ring_op("matmul", x, e.T), torch.matmul(x, e.T))
    assert torch.equal(ring_op("mul", x, e[:1]), x * e[:1])


def test_patch_is_reversible():
    from crypten.mpc.provider.ttp_provider import TTPServer

    assert not crypten_dealer.PATCH.installed  # the launcher installs it in the parties
    crypten_dealer.PATCH.install()
    try:
        assert hasattr(TTPServer, "premask_triple")
    finally:
        crypten_dealer.PATCH.uninstall()
    assert not hasattr(TTPServer, "premask_triple")
    assert not hasattr(TTPServer, "premask_register")


# ---------------------------------------------------------------- correctness


def _correctness(values: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    import crypten

    def enc(t, src=0):
        return crypten.cryptensor(t, src=src)

    out: dict[str, torch.Tensor] = {}
    w = premask.fixed_operand(enc(values["w"]), name="w")
    out["value"] = w.value().get_plain_text()
    for t in range(steps):  # the same operand, many products with fresh activations
        out[f"batched/{t}"] = w.rmatmul(enc(values["x"][t], src=1)).get_plain_text()
    g = premask.fixed_operand(enc(values["g"]), name="g")
    out["mul"] = g.mul(enc(values["y"], src=1)).get_plain_text()
    out["mul_broadcast"] = g.mul(enc(values["y"][:1], src=1)).get_plain_text()
    parts = [premask.fixed_operand(enc(p), name=f"part{i}") for i, p in enumerate(values["parts"])]
    fused = premask.FixedOperand.cat(parts, dim=-1)
    out["cat_columns"] = fused.rmatmul(enc(values["x"][0], src=1)).get_plain_text()
    out["cat_value"] = fused.transpose(0, 1).value().get_plain_text()
    out["mul_transposed"] = w.transpose(0, 1).mul(enc(values["y2"], src=1)).get_plain_text()
    # an encrypted KV cache: rows appended per step, q @ K^T and p @ V with batch dims
    keys = [premask.fixed_operand(enc(values["k0"]), name="k0")]
    vals = [premask.fixed_operand(enc(values["v0"]), name="v0")]
    for t in range(steps):
        k_row, v_row = premask.FixedOperand.create_many(
            [enc(values["k"][t]), enc(values["v"][t])], names=[f"k{t + 1}", f"v{t + 1}"])
        keys.append(k_row)
        vals.append(v_row)
        k_t = premask.FixedOperand.cat(keys, dim=-2).transpose(-1, -2)
        v = premask.FixedOperand.cat(vals, dim=-2)
        out[f"scores/{t}"] = k_t.rmatmul(enc(values["q"][t], src=1)).get_plain_text()
        out[f"values/{t}"] = v.rmatmul(enc(values["p"][t], src=1)).get_plain_text()
    # the same cache grown as cat([cache, row]) (a transformers cache layer does this)
    cache = keys[0]
    for row in keys[1:]:
        cache = premask.FixedOperand.cat([cache, row], dim=1)
        assert len(cache.recipe[2]) == cache.shape[1] - values["k0"].shape[1] + 1  # flat
    out["nested_cat"] = cache.transpose(-1, -2).rmatmul(
        enc(values["q"][0], src=1)).get_plain_text()
    out["cat_memos"] = torch.tensor(len(premask._session().cats))
    return out


def _plain_expectations(values: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    exp = {"value": values["w"]}
    for t in range(steps):
        exp[f"batched/{t}"] = values["x"][t] @ values["w"]
    exp["mul"] = values["y"] * values["g"]
    exp["mul_broadcast"] = values["y"][:1] * values["g"]
    exp["cat_columns"] = values["x"][0] @ torch.cat(values["parts"], dim=-1)
    exp["cat_value"] = torch.cat(values["parts"], dim=-1).T
    exp["mul_transposed"] = values["y2"] * values["w"].T
    all_keys = torch.cat([values["k0"], *values["k"]], dim=-2)
    exp["nested_cat"] = values["q"][0] @ all_keys.transpose(-1, -2)
    exp["cat_memos"] = torch.tensor(4)  # fused weight, V cache, K cache grown both ways
    for t in range(steps):
        k = torch.cat([values["k0"], *values["k"][: t + 1]], dim=-2)
        v = torch.cat([values["v0"], *values["v"][: t + 1]], dim=-2)
        exp[f"scores/{t}"] = values["q"][t] @ k.transpose(-1, -2)
        exp[f"values/{t}"] = values["p"][t] @ v
    return exp


def _values(steps: int, heads: int = 3, d: int = 8, prompt: int = 3) -> dict:
    gen = torch.Generator().manual_seed(7)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    return {
        "w": r(6, 5), "y2": r(5, 6), "x": [r(2, 3, 6) for _ in range(steps)],
        "g": r(3, 4), "y": r(3, 4),
        "parts": [r(6, 2), r(6, 3), r(6, 1)],
        "k0": r(heads, prompt, d), "v0": r(heads, prompt, d),
        "k": [r(heads, 1, d) for _ in range(steps)], "v": [r(heads, 1, d) for _ in range(steps)],
        "q": [r(heads, 1, d) for _ in range(steps)],
        "p": [torch.softmax(r(heads, 1, prompt + t + 1), -1) for t in range(steps)],
    }


@pytest.mark.parametrize("parties,dealer", CONFIGS)
def test_products_match_plaintext(parties, dealer):
    steps = 4
    values = _values(steps)
    results = launch(_correctness, values, steps,
                     config=LaunchConfig(parties=parties, dealer=dealer, timeout_s=120))
    expected = _plain_expectations(values, steps)
    for rank_result in results:
        assert set(rank_result) == set(expected)
        for key, want in expected.items():
            got = rank_result[key]
            assert got.shape == want.shape, key
            assert torch.allclose(got, want, atol=TOL), (key, (got - want).abs().max())


def _opened_beside_a_product() -> dict:
    import crypten
    import crypten.communicator as comm

    from crypten_mpcache.secure.primitives.openings import open_together

    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(6, 4, generator=g), torch.randn(3, 6, generator=g)
    out = {}
    (operand,) = premask.FixedOperand.create_many([crypten.cryptensor(w)], names=["w_d"],
                                                  deferred=True)
    joined = premask.FixedOperand.cat([operand, operand], 0)  # before the opening
    first = operand.product_pending(crypten.cryptensor(x), "matmul")  # takes the opening
    refused = []
    for use in (lambda: open_together(operand.product_pending(crypten.cryptensor(x),
                                                              "matmul")),
                lambda: operand.transpose(0, 1).value()):
        try:  # finished before the opening that ``first`` took: refused, not wrong
            use()
        except RuntimeError as error:
            refused.append(str(error))
    before = comm.get().comm_rounds
    (product,) = open_together(first)
    out["rounds"] = comm.get().comm_rounds - before
    out["product"] = product.get_plain_text()
    out["joined"] = joined.value().get_plain_text()
    pending = operand.product_pending(crypten.cryptensor(x), "matmul")
    before = comm.get().comm_rounds
    (later,) = open_together(pending)
    out["rounds_alone"] = comm.get().comm_rounds - before
    out["later"] = later.get_plain_text()
    out["refused"] = refused
    out["want"], out["w"] = x @ w, w
    return out


@pytest.mark.parametrize("parties,dealer", CONFIGS)
def test_an_operand_opens_beside_its_first_product(parties, dealer):
    """``deferred=True``: D opens in the same round as the first product with the operand
    (its finish reads D after the opening's); a concatenation made before gets its copy
    of D; a use that would read D before the opening it cannot run is refused."""
    out = launch(_opened_beside_a_product,
                 config=LaunchConfig(parties=parties, dealer=dealer, timeout_s=120))[0]
    assert out["rounds"] == out["rounds_alone"]  # the opening adds no round to the product
    assert torch.allclose(out["product"], out["want"], atol=TOL)
    assert torch.allclose(out["later"], out["want"], atol=TOL)
    assert torch.allclose(out["joined"], torch.cat([out["w"], out["w"]]), atol=TOL)
    assert len(out["refused"]) == 2
    assert all("before its opening" in message for message in out["refused"])


# ---------------------------------------------------------------- names and masks


def _reuse_name() -> str:
    import crypten

    premask.fixed_operand(crypten.cryptensor(torch.ones(2, 2)), name="weight")
    try:
        premask.fixed_operand(crypten.cryptensor(torch.ones(2, 2)), name="weight")
    except premask.OperandNameError as error:
        return str(error)
    return ""


def test_a_name_masks_one_value_only():
    results = launch(_reuse_name, config=LaunchConfig(parties=2, dealer="tfp", timeout_s=60))
    assert all("already exists" in message for message in results)


# ---------------------------------------------------------------- communication


def _costs(fn) -> tuple[object, dict]:
    from crypten_mpcache.runtime.cost import CostMeter, operator_scope

    meter = CostMeter()
    with meter.phase("p"), operator_scope("linear"):
        result = fn()
    ops = meter.report()["phase_operators"]["p"]
    zero = {"bytes": 0, "rounds": 0}
    return result, {kind: (ops.get(kind, zero)["bytes"], ops.get(kind, zero)["rounds"])
                    for kind in ("linear", "dealer", "premask")}


def _product_costs(x_shape: tuple, b_shapes: list[tuple], premask_on: bool) -> list[dict]:
    import crypten

    costs = []
    for i, b_shape in enumerate(b_shapes):
        b = crypten.cryptensor(torch.randn(b_shape) / 10)
        operand, setup = _costs(lambda b=b, i=i: premask.fixed_operand(
            b, name=f"b{i}", premask=premask_on))
        x = crypten.cryptensor(torch.randn(x_shape), src=1)
        _, cost = _costs(lambda operand=operand, x=x: operand.rmatmul(x))
        costs.append({**cost, "setup": setup})
    return costs


X_SHAPE = (1, 576)
B_SHAPES = [(576, 1536), (576, 768)]


def _ttp_request_overhead(out_shape: tuple) -> int:
    """What CrypTen's counters charge party 0 for one TTP request besides the result."""
    message = {"function": "", "device": None, "args": (), "kwargs": {}}
    return int(sys.getsizeof(message) + sys.getsizeof(torch.Size(out_shape)))


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_premasked_product_opens_only_the_activation(dealer):
    config = LaunchConfig(parties=2, dealer=dealer, timeout_s=120)
    premasked = launch(_product_costs, X_SHAPE, B_SHAPES, True, config=config)
    plain = launch(_product_costs, X_SHAPE, B_SHAPES, False, config=config)
    x_elements = X_SHAPE[0] * X_SHAPE[1]
    for rank in (0, 1):
        for b_shape, cost, base in zip(B_SHAPES, premasked[rank], plain[rank], strict=True):
            # online: one all-reduce of eps = x - A (8 bytes, sent and received), 1 round
            assert cost["linear"] == (2 * 8 * x_elements, 1)
            assert cost["premask"] == (0, 0)  # D was opened when the operand was created
            out_shape = (X_SHAPE[0], b_shape[1])
            dealt = 0  # TFP shares by pseudo-random zero sharing; TTP parties > 0 use PRGs
            if dealer == "ttp" and rank == 0:  # party 0 receives its share of C = A M
                dealt = 8 * out_shape[0] * out_shape[1] + _ttp_request_overhead(out_shape)
            assert cost["dealer"] == ((dealt, 3) if dealt else (0, 0))
            # CrypTen's plain product opens x - a AND the whole operand B - b (its triple
            # request is charged to the caller's scope)
            b_elements = b_shape[0] * b_shape[1]
            assert base["linear"][0] == 2 * 8 * (x_elements + b_elements) + dealt
            setup = cost["setup"]  # D = B - M is opened once, charged to "premask"
            assert setup["premask"] == (2 * 8 * b_elements, 1)
            assert setup["linear"] == (0, 0)
            registered = _ttp_request_overhead((0,)) if dealer == "ttp" and rank == 0 else 0
            assert setup["dealer"] == ((registered, 3) if registered else (0, 0))
            assert base["setup"] == {"linear": (0, 0), "dealer": (0, 0), "premask": (0, 0)}
        # independent of the operand's size: same bytes for B of 1536 and of 768 columns
        assert premasked[rank][0]["linear"] == premasked[rank][1]["linear"]


def _create_many_costs(shapes: list[tuple[int, ...]]) -> dict:
    import crypten

    values = [crypten.cryptensor(torch.randn(shape)) for shape in shapes]
    operands, cost = _costs(lambda: premask.FixedOperand.create_many(
        values, names=[f"row{i}" for i in range(len(values))]))
    cost["values"] = [o.value().get_plain_text() for o in operands]
    return cost


def test_create_many_opens_all_operands_in_one_round():
    shapes = [(3, 1, 8), (3, 1, 8), (5, 7)]
    results = launch(_create_many_costs, shapes,
                     config=LaunchConfig(parties=2, dealer="ttp", timeout_s=60))
    elements = sum(torch.Size(s).numel() for s in shapes)
    for rank, cost in enumerate(results):
        assert cost["premask"] == (2 * 8 * elements, 1)
        assert cost["dealer"] == ((_ttp_request_overhead((0,)), 3) if rank == 0 else (0, 0))
        assert [tuple(v.shape) for v in cost["values"]] == shapes


def _transcripts(scale: float) -> list[tuple[int, int]]:
    import crypten
    import crypten.communicator as comm

    gen = torch.Generator().manual_seed(int(scale * 1000))
    trace = []

    def mark(fn):
        before = (comm.get().comm_bytes, comm.get().comm_rounds)
        result = fn()
        trace.append((comm.get().comm_bytes - before[0], comm.get().comm_rounds - before[1]))
        return result

    w = mark(lambda: premask.fixed_operand(
        crypten.cryptensor(scale * torch.randn(16, 8, generator=gen)), name="w"))
    keys = []
    for t in range(3):
        k = mark(lambda t=t: premask.fixed_operand(
            crypten.cryptensor(scale * torch.randn(2, 1, 8, generator=gen)), name=f"k{t}"))
        keys.append(k)
        x = crypten.cryptensor(scale * torch.randn(2, 1, 16, generator=gen), src=1)
        h = mark(lambda x=x: w.rmatmul(x))
        mark(lambda h=h, t=t: premask.FixedOperand.cat(keys, -2).transpose(-1, -2).rmatmul(h))
        mark(lambda: w.transpose(0, 1).mul(crypten.cryptensor(torch.ones(1, 16), src=1)))
    return trace


@pytest.mark.parametrize("parties,dealer", [(2, "ttp"), (3, "tfp")])
def test_transcript_does_not_depend_on_secret_values(parties, dealer):
    config = LaunchConfig(parties=parties, dealer=dealer, timeout_s=120)
    small = launch(_transcripts, 0.5, config=config)
    large = launch(_transcripts, 3.0, config=config)
    assert small == large
    assert all(len(trace) == 13 for trace in small)


# ---------------------------------------------------------------- mask freshness


def _freshness() -> dict[str, torch.Tensor]:
    """Two operands masking the same secret value, and two products with the same x: what
    each party sees opened (D = value - mask, eps = x - A)."""
    import crypten
    import crypten.communicator as comm

    value = crypten.cryptensor(torch.linspace(-3.0, 3.0, 48).reshape(6, 8))
    first, second = premask.FixedOperand.create_many([value, value], names=["w", "w_again"])
    third = premask.fixed_operand(value, name="w_later")
    x = crypten.cryptensor(torch.randn(4, 6, generator=torch.Generator().manual_seed(3)), src=1)
    communicator = comm.get()
    original, opened = communicator.all_reduce, []

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        opened.append(result.clone())
        return result

    communicator.all_reduce = recording
    try:
        products = [first.rmatmul(x).get_plain_text(), first.rmatmul(x).get_plain_text()]
    finally:
        communicator.all_reduce = original
    return {"d": [first._pair[0], second._pair[0], third._pair[0]],
            "encoded": value.encoder.encode(value.get_plain_text()),
            "eps": [t.reshape(x.share.shape) for t in opened  # openings are flat
                    if t.numel() == x.share.numel()], "products": products,
            "expected": x.get_plain_text() @ value.get_plain_text()}


@pytest.mark.parametrize("dealer", ["ttp", "tfp"])
def test_every_operand_and_product_gets_a_fresh_mask(dealer):
    """A mask reused for two operands would open the same D twice (and D - D' = 0 reveals
    that the values are equal, D = value if the mask were zero); a triple reused for two
    products would open the same eps = x - A twice. Random 64-bit masks make equal
    elements a 2^-64 event: require differences at (about) every element."""
    results = launch(_freshness, config=LaunchConfig(parties=2, dealer=dealer, timeout_s=60))
    for rank_result in results:
        d, encoded = rank_result["d"], rank_result["encoded"]
        assert torch.equal(d[0], results[0]["d"][0])  # D is opened: every party has it
        for i in range(3):
            assert (d[i] != encoded).float().mean() > 0.97, i
            for j in range(i):
                assert (d[i] != d[j]).float().mean() > 0.97, (i, j)
        eps = rank_result["eps"]
        assert len(eps) == 2, [e.shape for e in eps]  # one opening per product
        assert (eps[0] != eps[1]).float().mean() > 0.97
        for product in rank_result["products"]:  # fresh masks, same correct result
            assert torch.allclose(product, rank_result["expected"], atol=TOL)
