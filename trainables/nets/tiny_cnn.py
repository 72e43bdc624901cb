"""A hand-made baseline: three conv blocks (8-16-32 maps), global pooling, a linear head."""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv3-BN-ReLU-maxpool x3, ~18k parameters in 3D with one input channel."""

    def __init__(self, in_channels: int, n_outputs: int, spatial_dims: int = 3, widths=(8, 16, 32)):
        super().__init__()
        conv, bn, pool = ((nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d) if spatial_dims == 3
                          else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d))
        layers, c = [], in_channels
        for w in widths:
            layers += [conv(c, w, 3, padding=1, bias=False), bn(w), nn.ReLU(), pool(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_outputs)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 2).mean(-1))
