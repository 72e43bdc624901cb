"""Hand-designed skip modules: the baselines the IAC is compared with (paper V-A, Table II).

Both plug into :meth:`trainables.nets.unets.SkipUNet.set_skips` on a frozen Stage I U-Net and
are built as ``Module(level, channels, spatial_dims)``, ``channels`` being the U-Net's
``skip_channels()`` list (per level, shallowest first: encoder channels, upsampled decoder
channels). Each returns a tensor shaped like the encoder features it replaces.

* :class:`AttentionGateSkip` -- Attention U-Net (Oktay et al. 2018): the upsampled decoder
  features gate the encoder features, ``x_enc * sigmoid(psi(relu(W_g g + W_x x_enc)))``;
  MONAI's ``AttentionBlock`` with ``F_int = F_l / 2``.
* :class:`NestedDenseSkip` -- UNet++ (Zhou et al. 2018): nested dense nodes
  ``X[m, n] = H(cat(X[m, 0..n-1], Up(X[m+1, n-1])))`` over the frozen encoder features
  ``X[m, 0]`` of this level and up to ``depth`` deeper skip levels; the module returns
  ``X[level, D]``. At the deepest skip level no deeper encoder feature is a skip, so there
  ``Up(X[level+1, 0])`` is the decoder's own upsampled bottleneck (``x_dec_up``), as in UNet++.
  ``H`` is BasicUNet's two-conv block (3x3 conv, instance norm, LeakyReLU, twice).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _channels_at(channels, level: int) -> tuple[int, int]:
    c = channels[level]
    return int(c[0]), int(c[1])


class AttentionGateSkip(nn.Module):
    """Attention gate on one skip: the decoder's upsampled features are the gating signal ``g``."""

    def __init__(self, level: int, channels, spatial_dims: int):
        super().__init__()
        from monai.networks.nets.attentionunet import AttentionBlock

        c_enc, c_dec = _channels_at(channels, level)
        self.level = level
        self.gate = AttentionBlock(spatial_dims, f_int=max(1, c_enc // 2), f_g=c_dec, f_l=c_enc)

    def forward(self, x_enc: torch.Tensor, x_dec_up: torch.Tensor, encoder_features=None) -> torch.Tensor:
        return self.gate(g=x_dec_up, x=x_enc)


def _two_conv(spatial_dims: int, cin: int, cout: int) -> nn.Module:
    from monai.networks.nets.basic_unet import TwoConv

    return TwoConv(spatial_dims, cin, cout, act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
                   norm=("instance", {"affine": True}), bias=True)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Upsample ``x`` to ``like``'s spatial size (handles odd sizes from 2x pooling)."""
    return F.interpolate(x, size=like.shape[2:], mode="nearest")


class NestedDenseSkip(nn.Module):
    """UNet++ nested dense skip for one level, on frozen encoder features (see module docstring)."""

    def __init__(self, level: int, channels, spatial_dims: int, depth: int = 2):
        super().__init__()
        levels = len(channels)
        self.level = level
        self.depth = min(int(depth), levels - 1 - level)
        enc = [int(c[0]) for c in channels]
        self.nodes = nn.ModuleDict()
        if self.depth == 0:  # deepest skip: X[l, 1] = H(cat(X[l, 0], x_dec_up))
            c_enc, c_dec = _channels_at(channels, level)
            self.nodes["0_1"] = _two_conv(spatial_dims, c_enc + c_dec, c_enc)
            return
        top = level + self.depth
        for m in range(level, top):
            for n in range(1, top - m + 1):
                cin = enc[m] * n + (enc[m + 1])
                self.nodes[f"{m - level}_{n}"] = _two_conv(spatial_dims, cin, enc[m])

    def forward(self, x_enc: torch.Tensor, x_dec_up: torch.Tensor, encoder_features=None) -> torch.Tensor:
        if self.depth == 0:
            return self.nodes["0_1"](torch.cat([x_enc, x_dec_up], dim=1))
        top = self.level + self.depth
        # X[m][n]; column 0 is the frozen encoder (the module's own x_enc at m = level)
        grid = {m: [x_enc if m == self.level else encoder_features[m]] for m in range(self.level, top + 1)}
        for diag in range(1, self.depth + 1):  # fill by columns so every Up(X[m+1, n-1]) exists
            for m in range(self.level, top - diag + 1):
                node = self.nodes[f"{m - self.level}_{diag}"]
                grid[m].append(node(torch.cat([*grid[m], _up(grid[m + 1][diag - 1], grid[m][0])], dim=1)))
        return grid[self.level][self.depth]


# name -> skip module class, constructed as cls(level, channels, spatial_dims)
BASELINES = {"attention": AttentionGateSkip, "nested": NestedDenseSkip}
