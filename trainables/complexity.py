"""Model complexity: parameters and FLOPs from a real counter (torch.utils.flop_counter).

FLOPs are counted the way FlopCounterMode does: 2 per multiply-accumulate of convolutions
and matrix products, for one input sample. Norms and activations are not counted.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a single sample of shape ``(C, *spatial)``."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
