"""``--comparison hybrid``: DCF keys for small comparison calls, the masked comparison above.

Checked: a call of at most ``dcf_max_elements`` elements costs the rounds of the DCF
comparison, a larger one exactly those of the masked comparison; both equal plaintext
(TTP dealt ahead and TFP); the threshold is validated; a private generation with the
hybrid gives plaintext greedy's tokens.
"""

from __future__ import annotations

import crypten
import crypten.communicator as comm
import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.testing import save_tiny_llama

SMALL = torch.tensor([-3.0, -1e-4, 0.0, 1e-4, 2.5, -700.0, 700.0, 1.0])  # 8 elements
LARGE = torch.linspace(-50.0, 50.0, 41)  # 41 elements, 0 among them


def _signs(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[x < 0] under MPC and the online rounds it took (dealer traffic apart)."""
    shared = crypten.cryptensor(x, src=0)
    before = comm.get().get_communication_stats()["rounds"]
    bits = shared._ltz()
    rounds = comm.get().get_communication_stats()["rounds"] - before
    return bits.get_plain_text(), rounds


def _both() -> dict:
    small, small_rounds = _signs(SMALL)
    large, large_rounds = _signs(LARGE)
    return {"small": small, "large": large, "small_rounds": small_rounds,
            "large_rounds": large_rounds}


@pytest.mark.parametrize("dealer,dealing", [("tfp", "ahead"), ("ttp", "ahead")])
def test_small_calls_compare_by_dcf_large_ones_masked(dealer, dealing):
    def run(comparison: str) -> dict:
        config = LaunchConfig(parties=2, dealer=dealer, dealing=dealing,
                              comparison=comparison, dcf_max_elements=8, timeout_s=120)
        return launch(_both, config=config)[0]

    hybrid, masked, dcf = run("hybrid"), run("masked"), run("dcf")
    for result in (hybrid, masked, dcf):
        assert torch.equal(result["small"], (SMALL < 0).float())
        assert torch.equal(result["large"], (LARGE < 0).float())
    assert hybrid["small_rounds"] == dcf["small_rounds"] < masked["small_rounds"]
    assert hybrid["large_rounds"] == masked["large_rounds"] > dcf["large_rounds"]


def _softmax_rounds() -> dict:
    """A masked softmax over (4, 16) scores (row-max levels of 32, 16, 8, 4 pairs; an exp
    clip of 64 elements) with the softmax's own threshold at 64 and at 0."""
    from crypten_mpcache.secure.functions.softmax import SoftmaxConfig, masked_softmax

    scores = torch.linspace(-6.0, 5.0, 64).reshape(4, 16)
    mask = torch.ones(4, 16, dtype=torch.long)
    shared = crypten.cryptensor(scores, src=0)
    out = {}
    for up_to in (64, 0):
        before = comm.get().get_communication_stats()["rounds"]
        probs = masked_softmax(shared, mask, config=SoftmaxConfig(dcf_max_elements=up_to))
        out[up_to] = comm.get().get_communication_stats()["rounds"] - before
        out[f"probs{up_to}"] = probs.get_plain_text()
    return out


@pytest.mark.parametrize("comparison", ["hybrid", "masked"])
def test_the_softmax_sets_the_threshold_of_its_own_calls(comparison):
    """Under hybrid at a threshold of 8, SoftmaxConfig.dcf_max_elements = 64 gives the
    row max's 4 levels and the exp's clip DCF keys (and the exp its table): fewer rounds
    than at 0 (no call of its own takes keys); under masked (no keys) it changes nothing.
    Both softmaxes exact."""
    config = LaunchConfig(parties=2, dealer="ttp", comparison=comparison,
                          dcf_max_elements=8, timeout_s=120)
    out = launch(_softmax_rounds, config=config)[0]
    expected = torch.softmax(torch.linspace(-6.0, 5.0, 64).reshape(4, 16), -1)
    for up_to in (64, 0):
        assert (out[f"probs{up_to}"] - expected).abs().max() < 2e-3
    if comparison == "hybrid":
        assert out[64] < out[0]
    else:
        assert out[64] == out[0]


def _softmax_dcf_elements() -> dict:
    """Elements compared by DCF keys in a masked softmax over 2 rows of 16 and of 64
    scores, with the softmax's per-row bound at 8 and at 128; and the results."""
    from crypten_mpcache.secure.functions.softmax import SoftmaxConfig, masked_softmax
    from crypten_mpcache.secure.primitives import dcf_comparison

    compared = []
    prepared = dcf_comparison._prepared  # every DCF comparison's keys are taken here

    def counting(share, *args, **kwargs):
        compared.append(share.numel())
        return prepared(share, *args, **kwargs)

    dcf_comparison._prepared = counting
    out = {}
    for width in (16, 64):
        scores = torch.linspace(-6.0, 5.0, 2 * width).reshape(2, width)
        shared = crypten.cryptensor(scores, src=0)
        for per_row in (8, 128):  # 128: the default
            compared.clear()
            probs = masked_softmax(shared, torch.ones(2, width, dtype=torch.long),
                                   config=SoftmaxConfig(dcf_max_per_row=per_row))
            out[width, per_row] = sum(compared)
            out["error", width, per_row] = float(
                (probs.get_plain_text() - torch.softmax(scores, -1)).abs().max())
    return out


def test_the_softmax_keys_per_row_stop_growing_with_the_row():
    """Under hybrid (protocol threshold 4096), the softmax's per-row bound of 8 deals keys
    for the row max's last levels only (8 + 4 + 2 + 1 pairs a row, whatever the width)
    and none for the exp's clip: the same 30 elements at widths 16 and 64, where the
    default bound (128) keys every level and the clip (2 x (15 + 16), then 2 x (63 + 64)).
    Every softmax exact."""
    config = LaunchConfig(parties=2, dealer="ttp", comparison="hybrid",
                          dcf_max_elements=4096, timeout_s=120)
    out = launch(_softmax_dcf_elements, config=config)[0]
    assert out[16, 8] == out[64, 8] == 2 * (8 + 4 + 2 + 1)
    assert (out[16, 128], out[64, 128]) == (2 * (15 + 16), 2 * (63 + 64))
    for width in (16, 64):
        for per_row in (8, 128):
            assert out["error", width, per_row] < 2e-3


def test_the_threshold_is_validated_and_reaches_the_launch():
    from crypten_mpcache.bench.runner import BenchConfig
    from crypten_mpcache.cli import main

    with pytest.raises(ValueError, match="dcf_max_elements"):
        LaunchConfig(comparison="hybrid", dcf_max_elements=0)
    from crypten_mpcache.secure.functions.softmax import SoftmaxConfig
    with pytest.raises(ValueError, match="dcf_max_elements"):
        SoftmaxConfig(dcf_max_elements=-1)
    with pytest.raises(ValueError, match="dcf_max_per_row"):
        SoftmaxConfig(dcf_max_per_row=-1)
    with pytest.raises(ValueError, match="dcf_max_elements"):
        PrivateGenerationConfig(comparison="hybrid", dcf_max_elements=0)
    config = PrivateGenerationConfig(comparison="hybrid", dcf_max_elements=1024)
    assert config.launch_config().dcf_max_elements == 1024
    bench = BenchConfig(shape="tiny", comparison="hybrid", dcf_max_elements=512)
    assert bench.launch_config().dcf_max_elements == 512
    assert main(["generate", "--dcf-max-elements", "0"]) == 2


def test_private_generation_with_the_hybrid_matches_plaintext(tmp_path):
    folder = save_tiny_llama(tmp_path / "m", seed=1, lm_head_gain=4.0, max_positions=64)
    prompt = [3, 14, 15, 9, 26, 5, 35]
    result = generate_ids(prompt, PrivateGenerationConfig(
        max_new_tokens=3, model_path=folder, dealer="ttp", comparison="hybrid",
        check=True))
    assert result.match, (result.generated_ids, result.plaintext_ids)


@pytest.mark.parametrize("cache,budget", [("full", None), ("mpcache", 64)])
def test_private_generation_under_dcf_with_narrow_keys_matches_plaintext(tmp_path, cache,
                                                                          budget):
    """Every comparison by DCF keys, narrowed where the range is documented (row max,
    argmax, SiLU gates, MPCache's boxes and top-k): the same tokens as plaintext greedy
    of the same method (the default MPCache at 160 tokens and 64 a step keeps 3 clusters
    of 8 out of its best coarse clusters' children: a secure top-k every step)."""
    folder = save_tiny_llama(tmp_path / "m", seed=2, lm_head_gain=4.0, qk_gain=10.0,
                             max_positions=192)
    prompt = torch.randint(0, 40, (160,), generator=torch.Generator().manual_seed(7)).tolist()
    result = generate_ids(prompt, PrivateGenerationConfig(
        max_new_tokens=3, model_path=folder, dealer="ttp", comparison="dcf", cache=cache,
        budget=budget, check=True))
    assert result.match, (result.generated_ids, result.plaintext_ids)
    for step in (1, 2):                  # each decode step runs a secure top-k (MPCache)
        decode = result.cost["phase_operators"][f"decode/{step}"]
        assert decode.get("topk", {}).get("bytes", 0) > 0 if cache == "mpcache" else \
            "topk" not in decode
