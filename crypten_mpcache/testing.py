"""Tiny, config-built checkpoints for tests and demos (nothing is downloaded)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crypten
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from crypten_mpcache.algorithm.torch_backend import TorchBackend
from crypten_mpcache.assets import smollm2_folder
from crypten_mpcache.models.llama import SecureModelOptions, secure_argmax, secure_forward
from crypten_mpcache.patches.transformers_llama import patch
from crypten_mpcache.secure.cache.kv_cache import SecureKVCache


def tiny_llama(seed: int, *, kv_heads: int = 2, layers: int = 2, vocab: int = 40,
               hidden: int = 32, max_positions: int = 128, tie: bool = False,
               qk_gain: float = 1.0, lm_head_gain: float = 1.0,
               **config: Any) -> LlamaForCausalLM:
    """A tiny random Llama (4 attention heads) in eval mode, the same for the same arguments.

    The norm gammas are drawn as 1 + 0.2 * randn (right after the seeded init, in
    parameter order) so that the secure RMSNorm is really tested, not multiplied by ones.
    ``qk_gain`` scales the query/key projections (peaky attention: top-k choices with
    margins far above fixed-point noise); ``lm_head_gain`` scales the LM head (wider logit
    gaps; with ``tie`` it scales the shared embedding too). ``config``: extra LlamaConfig
    fields (e.g. ``attn_implementation="eager"``).
    """
    torch.manual_seed(seed)
    llama_config = LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                               intermediate_size=2 * hidden, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=kv_heads,
                               max_position_embeddings=max_positions, rms_norm_eps=1e-5,
                               tie_word_embeddings=tie, **config)
    return _randomized(LlamaForCausalLM(llama_config).eval(), qk_gain, lm_head_gain)


def tiny_qwen2(seed: int, *, kv_heads: int = 1, layers: int = 2, vocab: int = 40,
               hidden: int = 32, max_positions: int = 128, tie: bool = False,
               qk_gain: float = 1.0, lm_head_gain: float = 1.0, bias_std: float = 0.5,
               **config: Any) -> Qwen2ForCausalLM:
    """A tiny random Qwen2 (4 attention heads, GQA 4:1 by default, RoPE theta 1e6, biased
    q/k/v drawn as ``bias_std * randn``, untied LM head), built like ``tiny_llama``."""
    torch.manual_seed(seed)
    config.setdefault("use_sliding_window", False)
    qwen_config = Qwen2Config(vocab_size=vocab, hidden_size=hidden,
                              intermediate_size=2 * hidden, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=kv_heads,
                              max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                              tie_word_embeddings=tie,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                              **config)
    return _randomized(Qwen2ForCausalLM(qwen_config).eval(), qk_gain, lm_head_gain, bias_std)


def _randomized(model: Any, qk_gain: float, lm_head_gain: float, bias_std: float = 0.0) -> Any:
    """Norm gammas 1 + 0.2 * randn and biases ``bias_std`` * randn (in parameter order,
    right after the seeded init), q/k projections x ``qk_gain``, LM head x ``lm_head_gain``."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            if name.endswith(".bias"):
                param.copy_(bias_std * torch.randn_like(param))
            if qk_gain != 1.0 and ("q_proj" in name or "k_proj" in name):
                param.mul_(qk_gain)
        if lm_head_gain != 1.0:
            model.lm_head.weight.mul_(lm_head_gain)
    return model


def save_tiny_llama(folder: Path | str, seed: int, family: str = "llama", **kwargs: Any) -> str:
    """``tiny_llama(seed, **kwargs)`` (``tiny_qwen2`` with ``family="qwen2"``) saved as a
    checkpoint folder (for the private generation entry points, which load a model by
    path); returns the folder as a str."""
    build = {"llama": tiny_llama, "qwen2": tiny_qwen2}[family]
    build(seed, **kwargs).save_pretrained(folder)
    return str(folder)


def assert_same_transcript(first_cost: dict, second_cost: dict) -> None:
    """Two runs' ``cost`` dicts (as in a generation result) show the same communication:
    bytes and rounds of setup, prefill, every decode step and every operator.

    Used to check that what the parties exchange does not depend on the private prompt.
    """
    for key in ("setup", "prefill"):
        assert (first_cost[key]["bytes"], first_cost[key]["rounds"]) == \
            (second_cost[key]["bytes"], second_cost[key]["rounds"]), key
    for a, b in zip(first_cost["decode"], second_cost["decode"], strict=True):
        assert (a["bytes"], a["rounds"]) == (b["bytes"], b["rounds"]), a["step"]
    assert first_cost["operators"].keys() == second_cost["operators"].keys()
    for kind, value in first_cost["operators"].items():
        other = second_cost["operators"][kind]
        assert (value["bytes"], value["rounds"]) == (other["bytes"], other["rounds"]), kind


def tiny_llama_checkpoint(folder: Path, *, seed: int = 0, kv_heads: int = 2,
                          layers: int = 2, context: int = 256) -> Path:
    """A tiny random Llama with SmolLM2's public tokenizer, saved like a real checkpoint.

    The vocabulary is the real one (49,152) so that text prompts, chat templates and the
    secure argmax over a real-sized vocabulary are exercised; everything else is tiny.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder()))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=kv_heads, max_position_embeddings=context,
                         tie_word_embeddings=True)
    folder = Path(folder)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def exact_plain(x: Any) -> torch.Tensor:
    """Decode an MPCTensor as raw / scale in float64, TESTS ONLY (reveals to everyone).

    Independent of CrypTen's ``FixedPointEncoder.decode`` (which, unpatched, decodes
    -k + r/2**16 with r < k as -k - 1 + r/2**16), so value checks cannot inherit it.
    """
    return x._tensor.reveal().double() / x.encoder.scale


def secure_greedy(model: torch.nn.Module, ids: list[int], steps: int,
                  premask: bool = True) -> dict[str, torch.Tensor]:
    """Inside every party: patch ``model``, prefill ``ids`` (party 1's), decode ``steps``
    tokens with the secure argmax fed back, restore. TESTS ONLY: the logits of each step
    are revealed (``exact_plain``) so they can be compared with plaintext; also returns
    the cache length of every layer."""
    options = SecureModelOptions(premask=premask)
    handle = patch(model, options)
    cache = SecureKVCache(model.config.num_hidden_layers, premask=premask)
    onehot = torch.nn.functional.one_hot(torch.tensor([ids]), model.config.vocab_size)
    x = crypten.cryptensor(onehot.float(), src=1)
    logits, position = [], 0
    for _ in range(steps):
        out = secure_forward(model, x, cache, position)
        position += int(x.shape[1])
        logits.append(exact_plain(out).reshape(-1))
        x = secure_argmax(out, options)
    lengths = [cache.get_seq_length(i) for i in range(model.config.num_hidden_layers)]
    handle.restore()
    return {"logits": torch.stack(logits), "cache_lengths": torch.tensor(lengths)}


def plaintext_greedy(model: torch.nn.Module, ids: list[int], steps: int
                     ) -> tuple[list[int], torch.Tensor]:
    """The plaintext reference of ``secure_greedy``: greedy ids and the (steps, vocab)
    logits, recomputed from the whole sequence at every step (no cache to get wrong)."""
    sequence, logits = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            last = model(torch.tensor([sequence])).logits[0, -1]
            logits.append(last)
            sequence.append(int(last.argmax()))
    return sequence[len(ids):], torch.stack(logits)


# --- an independent reference of MPCache's selections (tests only) ---------------------


@contextlib.contextmanager
def topk_margins() -> Iterator[list[float]]:
    """Record, for every plaintext top-k that chooses (0 < k < G), the smallest gap between
    the k-th and (k+1)-th score: a test asserts it clears fixed-point noise, so that an
    MPC-vs-plaintext comparison tests the algorithm, not rounding."""
    margins: list[float] = []
    original = TorchBackend.topk_onehot

    def measured(self: TorchBackend, scores: torch.Tensor, k: int,
                 ordered: bool = True) -> torch.Tensor:
        if 0 < k < scores.shape[-1]:
            top = scores.sort(dim=-1, descending=True).values
            margins.append(float((top[..., k - 1] - top[..., k]).min()))
        return original(self, scores, k, ordered)

    TorchBackend.topk_onehot = measured
    try:
        yield margins
    finally:
        TorchBackend.topk_onehot = original


class AttentionInputs:
    """Forward pre-hooks on every Llama attention module that record, per layer and call,
    the post-RoPE query and key rows computed from the module's own inputs.

    Why: a selection test must not take its expected answer from the code under test.
    The q and k rows are recomputed with transformers' projections and RoPE only, so a
    reference selection built from them is independent of ``crypten_mpcache.algorithm``.
    Use as a context manager around a plaintext run; ``keys(layer)`` concatenates every
    call's key rows (the cache in original order), ``queries(layer)[i]`` is call i's.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.calls: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> AttentionInputs:
        modules = [m for m in self.model.modules()
                   if hasattr(m, "layer_idx") and hasattr(m, "q_proj") and hasattr(m, "k_proj")]
        for module in modules:
            self._hooks.append(module.register_forward_pre_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"]
        batch, length, _ = hidden.shape
        dim = module.head_dim
        with torch.no_grad():
            q = module.q_proj(hidden).view(batch, length, -1, dim).transpose(1, 2)
            k = module.k_proj(hidden).view(batch, length, -1, dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        self.calls.setdefault(module.layer_idx, []).append((q.double(), k.double()))

    def keys(self, layer: int, calls: int | None = None) -> torch.Tensor:
        """Key rows ``(B, Hkv, N, D)`` of the first ``calls`` forwards (all by default)."""
        return torch.cat([k for _, k in self.calls[layer][:calls]], dim=-2)

    def queries(self, layer: int) -> list[torch.Tensor]:
        return [q for q, _ in self.calls[layer]]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores along the last dim (ties to the lower index)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def reference_static_positions(query: torch.Tensor, keys: torch.Tensor, *, sink: int,
                               window: int, n_select: int, scope: str = "layer"
                               ) -> torch.Tensor:
    """Prompt positions look-once static eviction keeps, from first principles.

    Importance of a prompt token = the softmax attention the last ``window`` prompt
    queries give it (causal, scaled by 1/sqrt(d)), summed over those rows and averaged
    over the query heads of the layer (``scope="layer"``) or of each KV head; the first
    ``sink`` and last ``window`` tokens are kept, and the ``n_select`` most important of
    the others. Returns sorted positions ``(B, 1 or Hkv, keep)``.
    """
    batch, hq, length, dim = query.shape
    hkv = keys.shape[1]
    full = keys.repeat_interleave(hq // hkv, dim=1)
    scores = query[..., length - window:, :] @ full.transpose(-1, -2) / dim ** 0.5
    rows = torch.arange(length - window, length).unsqueeze(1)
    scores = scores.masked_fill(torch.arange(length).unsqueeze(0) > rows, float("-inf"))
    per_head = torch.softmax(scores, dim=-1).sum(dim=2)  # (B, Hq, L)
    if scope == "layer":
        importance = per_head.mean(dim=1, keepdim=True)
    else:
        importance = per_head.reshape(batch, hkv, hq // hkv, length).mean(dim=2)
    middle = _top(importance[..., sink: length - window], n_select) + sink
    heads = importance.shape[1]
    fixed = torch.cat([torch.arange(sink), torch.arange(length - window, length)])
    kept = torch.cat([fixed.expand(batch, heads, -1), middle], dim=-1)
    return kept.sort(dim=-1).values


def reference_clusters(query: torch.Tensor, keys: torch.Tensor, *, sink: int,
                       sizes: tuple[int, ...], ks: tuple[int, ...], n_top: int,
                       alpha: float, per_layer: bool) -> torch.Tensor:
    """Finest clusters MPCache's hierarchical selection keeps, from first principles.

    The competing region is the ``n_top`` coarsest clusters after the ``sink`` tokens.
    A cluster's representative is ``alpha * max + (1 - alpha) * min`` of its keys per
    dimension; its score is the sum of the group's query rows dotted with it (summed over
    KV heads when ``per_layer``). Level 0 keeps its ``ks[0]`` best clusters; each finer
    level keeps the ``ks[l]`` best CHILDREN of the clusters kept so far. Returns the
    sorted absolute finest-cluster indices ``(B, 1 or Hkv, ks[-1])``.
    """
    batch, hkv, _, dim = keys.shape
    region = keys[..., sink: sink + n_top * sizes[0], :]
    q_sum = query.reshape(batch, hkv, -1, dim).sum(dim=2)  # (B, Hkv, D)
    kept = None
    for level, size in enumerate(sizes):
        blocks = region.reshape(batch, hkv, -1, size, dim)
        rep = alpha * blocks.amax(dim=3) + (1 - alpha) * blocks.amin(dim=3)
        scores = torch.einsum("bhd,bhcd->bhc", q_sum, rep)
        if per_layer:
            scores = scores.sum(dim=1, keepdim=True)
        if kept is None:
            candidates = torch.arange(scores.shape[-1]).expand(*scores.shape[:-1], -1)
        else:
            fan = sizes[level - 1] // size
            candidates = (kept.unsqueeze(-1) * fan + torch.arange(fan)).flatten(-2)
        best = _top(torch.gather(scores, -1, candidates), ks[level])
        kept = torch.gather(candidates, -1, best)
    return kept.sort(dim=-1).values
