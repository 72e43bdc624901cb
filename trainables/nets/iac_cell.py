"""The Implantable Adaptive Cell (IAC) of a U-Net skip connection (IAC paper, section III-B).

A cell is a DAG of two inputs and four intermediate nodes joined by 14 edges: input0 is the
upsampled decoder features, input1 the encoder's skip features, each through a 1x1 conv to the
cell width ``C``; every intermediate node sums its incoming edges; the four nodes are
concatenated and a 1x1 conv aligns them to the encoder's channels, so a cell's output is shaped
like the skip tensor it replaces. One genotype is shared by every skip level; every level has its
own weights.

How a cell is implanted (:data:`IMPLANTS`): ``replace`` (the paper's form) hands the decoder the
cell's output in place of the skip tensor; ``residual`` hands it ``skip + cell(...)`` with the
output 1x1 conv initialised to zero (weight and bias, as zero-initialised adapters do), so at
initialisation the implanted U-Net computes exactly the frozen U-Net and training moves away from
it only as far as the loss asks.

* :data:`OPS` -- the eight candidate operations (DARTS / PC-DARTS ``operations.py``), name ->
  constructor ``(C, spatial_dims, affine)``, 2D and 3D through MONAI's layer factories.
* :class:`Genotype` -- a discrete cell: two (op, input) pairs per node (PC-DARTS ``genotypes.py``).
* :class:`MixedOp` -- the partial-channel mixed edge of eq. 3 (1/K channels through the softmax
  mixture of eqs. 1-2, the rest passed through, then a channel shuffle).
* :class:`ArchParameters` -- alpha (operations) and beta (edges), initialised to ones
  (Algorithm 1); edge normalisation by softmax (eqs. 4-5) or by :func:`tan_rescale` (eqs. 6-10).
* :class:`SearchCell` (continuous, Algorithm 2) and :class:`DiscreteCell` (Algorithm 3).
* :func:`derive_genotype` -- discretisation (III-B.3): per node the two edges whose strongest
  non-zero operation weighs most, and that operation on each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

PRIMITIVES = ("zero", "identity", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")
ZERO = "zero"
STEPS = 4  # intermediate nodes
N_INPUTS = 2  # input0: upsampled decoder features, input1: encoder skip features
N_EDGES = sum(N_INPUTS + i for i in range(STEPS))  # 2 + 3 + 4 + 5 = 14
INPUT_NAMES = ("decoder", "encoder")
REPLACE, RESIDUAL = "replace", "residual"
IMPLANTS = (REPLACE, RESIDUAL)  # how a cell's output enters the decoder (module docstring)


def _conv(dims: int, c_in: int, c_out: int, kernel: int, padding: int = 0, dilation: int = 1,
          groups: int = 1, bias: bool = False) -> nn.Module:
    return Conv[Conv.CONV, dims](c_in, c_out, kernel, stride=1, padding=padding, dilation=dilation, groups=groups,
                                 bias=bias)


def _bn(dims: int, c: int, affine: bool) -> nn.Module:
    return Norm[Norm.BATCH, dims](c, affine=affine)


class Zero(nn.Module):
    """No connection: zeros shaped like the input."""

    def forward(self, x):
        return x.mul(0.0)


class ReLUConvBN(nn.Sequential):
    """ReLU -> k x k conv -> BN (DARTS' preprocessing; 1x1 for the cell inputs)."""

    def __init__(self, c_in: int, c_out: int, dims: int, kernel: int = 1, affine: bool = True):
        super().__init__(nn.ReLU(inplace=False), _conv(dims, c_in, c_out, kernel, padding=kernel // 2),
                         _bn(dims, c_out, affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k conv (dilation d) -> pointwise conv -> BN."""

    def __init__(self, c: int, dims: int, kernel: int, dilation: int, affine: bool):
        pad = dilation * (kernel - 1) // 2
        super().__init__(nn.ReLU(inplace=False), _conv(dims, c, c, kernel, pad, dilation, groups=c),
                         _conv(dims, c, c, 1), _bn(dims, c, affine))


class SepConv(nn.Sequential):
    """Two stacked undilated depthwise-separable convs (DARTS' ``sep_conv``)."""

    def __init__(self, c: int, dims: int, kernel: int, affine: bool):
        super().__init__(DilConv(c, dims, kernel, 1, affine), DilConv(c, dims, kernel, 1, affine))


def _pool(kind: str, c: int, dims: int, affine: bool, search: bool) -> nn.Module:
    pool = (Pool[Pool.MAX, dims](3, stride=1, padding=1) if kind == "max"
            else Pool[Pool.AVG, dims](3, stride=1, padding=1, count_include_pad=False))
    # PC-DARTS normalises pooling outputs inside the mixed op (their scale differs from the convs')
    return nn.Sequential(pool, _bn(dims, c, False)) if search else pool


# name -> constructor(C, spatial_dims, affine, search); every op keeps channels and resolution
OPS = {
    "zero": lambda c, d, affine, search=False: Zero(),
    "identity": lambda c, d, affine, search=False: nn.Identity(),
    "max_pool_3x3": lambda c, d, affine, search=False: _pool("max", c, d, affine, search),
    "avg_pool_3x3": lambda c, d, affine, search=False: _pool("avg", c, d, affine, search),
    "sep_conv_3x3": lambda c, d, affine, search=False: SepConv(c, d, 3, affine),
    "sep_conv_5x5": lambda c, d, affine, search=False: SepConv(c, d, 5, affine),
    "dil_conv_3x3": lambda c, d, affine, search=False: DilConv(c, d, 3, 2, affine),
    "dil_conv_5x5": lambda c, d, affine, search=False: DilConv(c, d, 5, 2, affine),
}
assert tuple(OPS) == PRIMITIVES


@dataclass(frozen=True)
class Genotype:
    """A discrete cell: ``edges[2*i]`` and ``edges[2*i+1]`` are node i's (op, input) pairs;
    inputs 0 (decoder) and 1 (encoder) are the cell inputs, 2.. the intermediate nodes.
    ``concat`` lists the nodes whose outputs are concatenated (all four intermediates)."""

    edges: tuple
    concat: tuple = tuple(range(N_INPUTS, N_INPUTS + STEPS))

    def __post_init__(self):
        edges = tuple((str(op), int(i)) for op, i in self.edges)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "concat", tuple(int(c) for c in self.concat))
        if len(edges) != 2 * STEPS:
            raise ValueError(f"a genotype has {2 * STEPS} edges (two per node), got {len(edges)}")
        for n, (op, i) in enumerate(edges):
            node = n // 2
            if op not in OPS or op == ZERO:
                raise ValueError(f"edge {n}: unknown or zero operation '{op}'; known: {', '.join(PRIMITIVES[1:])}")
            if not 0 <= i < N_INPUTS + node:
                raise ValueError(f"edge {n}: node {node} can only take inputs 0..{N_INPUTS + node - 1}, got {i}")

    def node_edges(self, node: int) -> tuple:
        return self.edges[2 * node:2 * node + 2]

    def to_dict(self) -> dict:
        return {"edges": [list(e) for e in self.edges], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, d: dict) -> "Genotype":
        return cls(edges=tuple(tuple(e) for e in d["edges"]), concat=tuple(d.get("concat", range(2, 2 + STEPS))))

    def __str__(self) -> str:
        names = list(INPUT_NAMES) + [f"n{i}" for i in range(STEPS)]
        return "; ".join(f"n{k}=" + "+".join(f"{op}({names[i]})" for op, i in self.node_edges(k))
                         for k in range(STEPS))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet), so the next edge samples other channels."""
    if groups == 1:
        return x
    b, c, *spatial = x.shape
    return x.view(b, groups, c // groups, *spatial).transpose(1, 2).reshape(b, c, *spatial)


class MixedOp(nn.Module):
    """Eq. 3: the first ``C / k`` channels go through the softmax-weighted sum of all operations,
    the others pass through unchanged; a channel shuffle then mixes the two parts."""

    def __init__(self, c: int, k: int, spatial_dims: int, primitives=PRIMITIVES):
        super().__init__()
        if c % k:
            raise ValueError(f"cell width {c} is not divisible by K={k}")
        self.k, self.c_part = k, c // k
        self.ops = nn.ModuleList(OPS[p](self.c_part, spatial_dims, False, True) for p in primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        part, rest = x[:, :self.c_part], x[:, self.c_part:]
        # the zero op adds w * 0 (and its weight's gradient is 0): skipping it saves two
        # partial-width tensors per edge (one kept for backward) and changes no value
        mixed = sum(w * op(part) for w, op in zip(weights, self.ops) if not isinstance(op, Zero))
        if not torch.is_tensor(mixed):  # every primitive is zero
            mixed = part.mul(0.0)
        return channel_shuffle(torch.cat([mixed, rest], dim=1), self.k)


def tan_rescale(beta: torch.Tensor) -> torch.Tensor:
    """Eqs. 6-10: softmax of tan(beta) over a node's incoming edges; when the largest weight
    exceeds 0.5 it is set to 0.5 and the others share the remaining 0.5 in proportion
    (``0.5 * psi_i / S_rest``, computed as 0.5 times a softmax over the other edges)."""
    t = torch.tan(beta)
    psi = torch.softmax(t - t.max(), dim=-1)
    if psi.numel() < 2:
        return psi
    is_star = F.one_hot(psi.detach().argmax(), psi.numel()).bool()
    rest = torch.softmax(t.masked_fill(is_star, -math.inf), dim=-1)  # = psi_i / S_rest off the max
    capped = torch.where(is_star, torch.full_like(psi, 0.5), 0.5 * rest)
    # branch-free (no host sync; works on the meta device): eq. 7 below 0.5, eqs. 8-10 above
    return torch.where(psi.detach().max() > 0.5, capped, psi)


def node_slices() -> list[slice]:
    """The edge indices of each intermediate node (node j has 2 + j incoming edges)."""
    out, start = [], 0
    for j in range(STEPS):
        out.append(slice(start, start + N_INPUTS + j))
        start += N_INPUTS + j
    return out


class ArchParameters(nn.Module):
    """alpha (14 x 8, operation choice) and beta (14, edge choice), initialised to ones
    (Algorithm 1, line 2); shared by the cells of every skip level."""

    def __init__(self, tan_beta: bool = True, primitives=PRIMITIVES):
        super().__init__()
        self.primitives = tuple(primitives)
        self.tan_beta = bool(tan_beta)
        self.alphas = nn.Parameter(torch.ones(N_EDGES, len(self.primitives)))
        self.betas = nn.Parameter(torch.ones(N_EDGES))

    def op_weights(self) -> torch.Tensor:
        """Eq. 1: softmax of alpha over the operations of each edge."""
        return torch.softmax(self.alphas, dim=-1)

    def edge_weights(self) -> torch.Tensor:
        """Eq. 4 (softmax of beta over a node's incoming edges) or eqs. 6-10 (tan rescaling)."""
        norm = tan_rescale if self.tan_beta else (lambda b: torch.softmax(b, dim=-1))
        return torch.cat([norm(self.betas[s]) for s in node_slices()])

    def genotype(self) -> "Genotype":
        return derive_genotype(self.op_weights().detach(), self.edge_weights().detach(), self.primitives)


def cell_width(enc_channels: int, k: int) -> int:
    """The cell's inner width: the encoder's channels rounded up to a multiple of K."""
    return max(k, int(math.ceil(enc_channels / k)) * k)


def check_implant(implant: str) -> str:
    if implant not in IMPLANTS:
        raise ValueError(f"unknown implant {implant!r}; known: {', '.join(IMPLANTS)}")
    return implant


class _CellIO(nn.Module):
    """The two 1x1 input convs and the 1x1 output conv every IAC has (III-B), and how the
    output enters the decoder (``implant``, :data:`IMPLANTS`)."""

    def __init__(self, enc_channels: int, dec_channels: int, c: int, spatial_dims: int, affine: bool,
                 implant: str = REPLACE):
        super().__init__()
        self.implant = check_implant(implant)
        self.pre_decoder = ReLUConvBN(dec_channels, c, spatial_dims, 1, affine)  # input0
        self.pre_encoder = ReLUConvBN(enc_channels, c, spatial_dims, 1, affine)  # input1
        self.post = _conv(spatial_dims, STEPS * c, enc_channels, 1, bias=True)

    def _init_implant(self) -> None:
        """``residual``: zero the output conv (after every weight is drawn, so both forms draw
        the same random numbers and share every other initial weight at one seed)."""
        if self.implant == RESIDUAL:
            nn.init.zeros_(self.post.weight)
            nn.init.zeros_(self.post.bias)

    def output(self, x_enc: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """The cell's contribution ``post(nodes)``: the decoder's skip tensor itself (replace) or
        added to the skip tensor (residual)."""
        out = self.post(nodes)
        return x_enc + out if self.implant == RESIDUAL else out

    def inputs(self, x_enc: torch.Tensor, x_dec_up: torch.Tensor) -> list:
        if x_dec_up.shape[2:] != x_enc.shape[2:]:
            x_dec_up = F.interpolate(x_dec_up, size=x_enc.shape[2:], mode="nearest")
        return [self.pre_decoder(x_dec_up), self.pre_encoder(x_enc)]


class SearchCell(_CellIO):
    """The continuous cell of Stage II (Algorithm 2): node j = sum_i Psi_ij * MixedOp_ij(x_i)
    (eq. 5), with alpha/beta read from the shared :class:`ArchParameters`."""

    def __init__(self, enc_channels: int, dec_channels: int, arch: ArchParameters, k: int = 4,
                 spatial_dims: int = 2, width: int | None = None, implant: str = REPLACE):
        c = width or cell_width(enc_channels, k)
        super().__init__(enc_channels, dec_channels, c, spatial_dims, affine=False, implant=implant)
        self.edges = nn.ModuleList(MixedOp(c, k, spatial_dims, arch.primitives) for _ in range(N_EDGES))
        # kept out of the module tree: the arch is shared, so its parameters belong to no one level
        object.__setattr__(self, "arch", arch)
        self._init_implant()

    def forward(self, x_enc, x_dec_up, encoder_features=None):
        states = self.inputs(x_enc, x_dec_up)
        alpha, psi = self.arch.op_weights(), self.arch.edge_weights()
        offset = 0
        for _ in range(STEPS):
            node = sum(psi[offset + i] * self.edges[offset + i](h, alpha[offset + i]) for i, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return self.output(x_enc, torch.cat(states[N_INPUTS:], dim=1))


class DiscreteCell(_CellIO):
    """The derived cell of Stage III (Algorithm 3): each node sums its genotype's two ops."""

    def __init__(self, genotype: Genotype, enc_channels: int, dec_channels: int, spatial_dims: int = 2,
                 width: int | None = None, implant: str = REPLACE):
        c = width or cell_width(enc_channels, 1)
        super().__init__(enc_channels, dec_channels, c, spatial_dims, affine=True, implant=implant)
        self.genotype = genotype
        self.ops = nn.ModuleList(OPS[op](c, spatial_dims, True) for op, _ in genotype.edges)
        self.post = _conv(spatial_dims, len(genotype.concat) * c, enc_channels, 1, bias=True)
        self._init_implant()

    def forward(self, x_enc, x_dec_up, encoder_features=None):
        states = self.inputs(x_enc, x_dec_up)
        for node in range(STEPS):
            (_, a), (_, b) = self.genotype.node_edges(node)
            states.append(self.ops[2 * node](states[a]) + self.ops[2 * node + 1](states[b]))
        return self.output(x_enc, torch.cat([states[i] for i in self.genotype.concat], dim=1))


def derive_genotype(op_weights, edge_weights, primitives=PRIMITIVES) -> Genotype:
    """III-B.3 (PC-DARTS ``genotype()``): weigh each edge's op weights by its edge weight Psi;
    per node keep the two edges whose strongest non-zero op weighs most, with that op."""
    w = torch.as_tensor(op_weights).detach().to(torch.float64)
    psi = torch.as_tensor(edge_weights).detach().to(torch.float64)
    if w.shape != (N_EDGES, len(primitives)) or psi.shape != (N_EDGES,):
        raise ValueError(f"expected op weights {N_EDGES}x{len(primitives)} and {N_EDGES} edge weights, "
                         f"got {tuple(w.shape)} and {tuple(psi.shape)}")
    allowed = torch.tensor([p != ZERO for p in primitives])
    edges = []
    for s in node_slices():
        weighted = (w[s] * psi[s, None]).masked_fill(~allowed, -math.inf)
        strength, best_op = weighted.max(dim=1)
        top = sorted(range(len(strength)), key=lambda i: (-float(strength[i]), i))[:2]
        edges.extend((primitives[int(best_op[i])], i) for i in top)
    return Genotype(edges=tuple(edges))


def search_cells(skip_channels, arch: ArchParameters, k: int = 4, spatial_dims: int = 2,
                 implant: str = REPLACE) -> list[SearchCell]:
    """One continuous cell per skip level ``(enc_ch, dec_up_ch)``, all reading ``arch``."""
    return [SearchCell(e, d, arch, k, spatial_dims, implant=implant) for e, d in skip_channels]


def discrete_cells(skip_channels, genotype: Genotype, spatial_dims: int = 2,
                   implant: str = REPLACE) -> list[DiscreteCell]:
    """One discrete cell of ``genotype`` per skip level, each with its own weights."""
    return [DiscreteCell(genotype, e, d, spatial_dims, implant=implant) for e, d in skip_channels]
