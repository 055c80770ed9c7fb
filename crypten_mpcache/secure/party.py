"""What every dealer-assisted protocol needs from the party it runs in: its rank, the
configured dealer, uniform ring words, and the opening of shares (one round)."""

from __future__ import annotations

import torch


def party_rank() -> int:
    import crypten.communicator as comm

    return comm.get().get_rank()


def provider_name() -> str:
    """CrypTen's configured dealer: ``TTP`` or ``TFP`` (or another provider)."""
    import crypten

    return crypten.mpc.get_default_provider().NAME


def uniform_words(size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform int64 words (the dealer replays the same call on a shared generator)."""
    return torch.randint(-(2 ** 63), 2 ** 63 - 1, size, generator=generator,
                         dtype=torch.long)


def open_sum(share: torch.Tensor) -> torch.Tensor:
    """Open additive shares (one round)."""
    import crypten.communicator as comm

    return comm.get().all_reduce(share)


def open_xor(share: torch.Tensor) -> torch.Tensor:
    """Open XOR shares (one round)."""
    import crypten.communicator as comm

    return comm.get().all_reduce(share, op=torch.distributed.ReduceOp.BXOR)
