"""The cell-based CNN of the ODE search (paper 2.1, Fig. 1, Table 1), 2D or 3D.

A stem convolution makes ``n_f_init`` feature maps; ``n_stacks`` stacks of ``n_modules``
cells follow, stacks joined by downsampling (max-pool /2, channels doubled by the next
cell's input projection); global average pooling and a linear classifier close the net.
Inside a cell (NAS-Bench-101 semantics, which the paper adopts) each node sums the outputs
of its predecessors and applies its operation; the output node sums its predecessors,
including the always-present input->output edge.
"""
from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from medcore.cell_genotype import INPUT, OPERATIONS, OUTPUT, CellArchitecture


def _conv(dims: int, c: int, k: int) -> nn.Module:
    return Conv[Conv.CONV, dims](c, c, k, padding=k // 2, bias=False)


def _norm(dims: int, c: int) -> nn.Module:
    return Norm[Norm.INSTANCE, dims](c, affine=True)


def _op(order: str, k: int):
    """Table 1 operation as a constructor ``(spatial_dims, channels) -> nn.Sequential``."""
    parts = {
        "conv_in_relu": lambda d, c: [_conv(d, c, k), _norm(d, c), nn.ReLU()],
        "conv_in_mish": lambda d, c: [_conv(d, c, k), _norm(d, c), nn.Mish()],
        "in_mish_conv": lambda d, c: [_norm(d, c), nn.Mish(), _conv(d, c, k)],
        "relu_conv": lambda d, c: [nn.ReLU(), _conv(d, c, k)],
        "mish_conv": lambda d, c: [nn.Mish(), _conv(d, c, k)],
    }[order]
    return lambda dims, c: nn.Sequential(*parts(dims, c))


# name -> constructor, the way PC-DARTS's operations.py keeps its OPS table.
OPS = {
    f"conv{k}_in_relu": _op("conv_in_relu", k) for k in (3, 5, 7)
} | {f"conv{k}_in_mish": _op("conv_in_mish", k) for k in (3, 5, 7)} \
  | {f"in_mish_conv{k}": _op("in_mish_conv", k) for k in (3, 5, 7)} \
  | {f"relu_conv{k}": _op("relu_conv", k) for k in (3, 5, 7)} \
  | {f"mish_conv{k}": _op("mish_conv", k) for k in (3, 5, 7)}
assert set(OPS) == set(OPERATIONS)


class Cell(nn.Module):
    """One module: the DAG of ``arch`` at ``channels`` maps, input projected if needed."""

    def __init__(self, arch: CellArchitecture, in_channels: int, channels: int, spatial_dims: int):
        super().__init__()
        self.project = (nn.Identity() if in_channels == channels
                        else Conv[Conv.CONV, spatial_dims](in_channels, channels, 1, bias=False))
        self.ops = nn.ModuleDict({str(i): OPS[name](spatial_dims, channels) for i, name in arch.nodes})
        self.order = [i for i, _ in arch.nodes]
        self.preds = {j: [i for i, jj in arch.edges if jj == j] for j in self.order + [OUTPUT]}

    def forward(self, x):
        out = {INPUT: self.project(x)}
        for j in self.order:
            out[j] = self.ops[str(j)](sum(out[i] for i in self.preds[j]))
        return sum(out[i] for i in self.preds[OUTPUT])


class CellNet(nn.Module):
    """Stem -> stacks of cells (downsampling between stacks) -> GAP -> classifier."""

    def __init__(self, arch: CellArchitecture, in_channels: int, n_outputs: int, spatial_dims: int = 3):
        super().__init__()
        conv, pool = Conv[Conv.CONV, spatial_dims], Pool[Pool.MAX, spatial_dims]
        c = arch.n_f_init
        # The paper leaves the stem open; batch norm (not IN) keeps differences in intensity
        # between samples, which the IN-based cell operations then cannot erase alone.
        bn = Norm[Norm.BATCH, spatial_dims]
        self.stem = nn.Sequential(conv(in_channels, c, 3, padding=1, bias=False), bn(c), nn.ReLU())
        layers, c_in = [], c
        for s in range(arch.n_stacks):
            if s > 0:
                layers.append(pool(2))
            c_out = arch.n_f_init * 2 ** s
            for _ in range(arch.n_modules):
                layers.append(Cell(arch, c_in, c_out, spatial_dims))
                c_in = c_out
        self.cells = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_outputs)

    def forward(self, x):
        x = self.cells(self.stem(x))
        return self.head(torch.flatten(x, 2).mean(-1))
