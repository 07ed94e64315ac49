"""Small helpers shared by the model tests."""

import torch


def count(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal images of ``shape``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
