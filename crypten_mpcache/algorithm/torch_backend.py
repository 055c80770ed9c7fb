"""Plaintext torch implementation of the Backend protocol (accuracy runs, tests)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TorchBackend:
    """Backend on ordinary torch tensors; semantics exactly as in ``backend.py``."""

    name = "torch"

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b

    def scale(self, a: torch.Tensor, c: float) -> torch.Tensor:
        return a * c

    def maximum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)

    def minimum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.minimum(a, b)

    def max(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.amax(dim=dim)

    def min(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.amin(dim=dim)

    def box(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x.amax(dim=dim), x.amin(dim=dim)

    def max_min(self, upper: torch.Tensor, lower: torch.Tensor, dim: int,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return upper.amax(dim=dim), lower.amin(dim=dim)

    def sum(self, x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
        return x.sum(dim=dim, keepdim=keepdim)

    def mean(self, x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
        return x.mean(dim=dim, keepdim=keepdim)

    def softmax(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.softmax(x.float(), dim=dim).to(x.dtype)

    def cat(self, xs: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat(list(xs), dim=dim)

    def topk_onehot(self, scores: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
        """Top-k as a one-hot matrix, rows in ascending index order (``ordered=False``:
        in rank order, best first, as the secure rank protocol returns them); ties to the
        lower index."""
        size = scores.shape[-1]
        if not 0 <= k <= size:
            raise ValueError(f"k={k} out of range for {size} items")
        # A stable descending sort puts equal scores in index order: ties go to lower index.
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
        chosen = torch.sort(order, dim=-1).values if ordered else order
        return torch.nn.functional.one_hot(chosen, size).to(scores.dtype)

    def gather(self, onehot: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(onehot, x)

    def reveal(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()
