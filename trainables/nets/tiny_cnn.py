"""A hand-made baseline: three conv blocks (8-16-32 maps), global pooling, a linear head."""
from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn


class TinyCNN(nn.Module):
    """conv3-BN-ReLU-maxpool x3, ~18k parameters in 3D with one input channel."""

    def __init__(self, in_channels: int, n_outputs: int, spatial_dims: int = 3, widths=(8, 16, 32)):
        super().__init__()
        conv, bn, pool = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims], Pool[Pool.MAX, spatial_dims]
        layers, c = [], in_channels
        for w in widths:
            layers += [conv(c, w, 3, padding=1, bias=False), bn(w), nn.ReLU(), pool(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_outputs)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 2).mean(-1))
