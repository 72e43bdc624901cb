"""The 29-gene encoding of the 3D cell-based CNN space (paper 2.1-2.2, Table 1, Fig. 2).

Genes 0-20 are the upper triangle (row-major: (0,1), (0,2), ..., (5,6)) of the 7x7 adjacency
matrix of a DAG with an input node 0, five intermediate nodes 1-5 and an output node 6; a
gene in [0, 0.5) places an edge (paper 2.2). The input->output edge is always present.
Genes 21-25 pick each intermediate node's operation from Table 1's 15 operations by 15
equal right-open sub-intervals of [0, 1]. Genes 26-28 pick n_stacks in {1, 2}, n_modules
in {1, 2} and n_f_init in {8, 16, 32} the same way.

Nodes that are not on a path from input to output are pruned, as NAS-Bench-101 does (the
paper adopts its |N| = 7, |E| = 9 limits); a cell with more than 9 remaining edges is
infeasible and is never trained. No torch here: the Searcher decodes and de-duplicates.
The decoded record (:class:`medcore.cell_genotype.CellArchitecture`), the operation names and
the node numbering are defined in :mod:`medcore.cell_genotype`; this module only decodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcore.cell_genotype import (INPUT, MAX_EDGES, N_F_INIT, N_MODULES, N_NODES, N_STACKS, OPERATIONS, OUTPUT,
                                   CellArchitecture)

N_GENES = 29
EDGE_GENES = N_NODES * (N_NODES - 1) // 2  # 21

# Violation of a cell over the edge limit: this base plus its excess share. Such a cell cannot be
# costed, so it ranks behind any cell that can (a FLOPs violation is ln of a ratio: 10 = e^10).
EDGE_VIOLATION_BASE = 10.0

# (i, j) for gene g, row-major over the upper triangle.
EDGE_INDEX = tuple((i, j) for i in range(N_NODES) for j in range(i + 1, N_NODES))


def interval_choice(value: float, choices: tuple):
    """Right-open equal sub-intervals of [0, 1]; 1.0 itself maps to the last choice."""
    k = min(int(float(value) * len(choices)), len(choices) - 1)
    return choices[max(k, 0)]


@dataclass(frozen=True)
class Decoded:
    """Result of decoding one genome: an architecture, or the reason it is infeasible and by
    how much it misses (``violation``, for the DE's feasibility rules; 0 when feasible)."""

    architecture: CellArchitecture | None
    feasible: bool
    reason: str = ""
    violation: float = 0.0

    @property
    def key(self) -> str | None:
        return self.architecture.key if self.architecture is not None else None


def adjacency(genome) -> np.ndarray:
    """Step (1) of Fig. 2: the upper-triangular 0/1 matrix, input->output edge forced."""
    g = np.asarray(genome, dtype=float)
    m = np.zeros((N_NODES, N_NODES), dtype=int)
    for gene, (i, j) in zip(g[:EDGE_GENES], EDGE_INDEX):
        m[i, j] = int(gene < 0.5)
    m[INPUT, OUTPUT] = 1
    return m


def prune(matrix: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Drop nodes not on an input->output path (NAS-Bench-101's ModelSpec pruning)."""
    n = len(matrix)
    from_input = {INPUT}
    for j in range(1, n):
        if any(matrix[i, j] and i in from_input for i in range(j)):
            from_input.add(j)
    to_output = {n - 1}
    for i in range(n - 2, -1, -1):
        if any(matrix[i, j] and j in to_output for j in range(i + 1, n)):
            to_output.add(i)
    keep = sorted(from_input & to_output)
    pruned = matrix.copy()
    dead = [k for k in range(n) if k not in keep]
    pruned[dead, :] = 0
    pruned[:, dead] = 0
    return pruned, keep


def decode(genome) -> Decoded:
    """Map a 29-vector in [0, 1] to a cell architecture (paper 2.2, the 5-step mapping)."""
    g = np.asarray(genome, dtype=float)
    if g.shape != (N_GENES,):
        raise ValueError(f"genome must have {N_GENES} genes, got shape {g.shape}")
    if np.any(~np.isfinite(g)) or g.min() < 0.0 or g.max() > 1.0:
        raise ValueError("genome genes must lie in [0, 1]")
    matrix, keep = prune(adjacency(g))
    n_edges = int(matrix.sum())
    ops = [interval_choice(v, OPERATIONS) for v in g[EDGE_GENES:EDGE_GENES + 5]]
    arch = CellArchitecture(
        nodes=tuple((k, ops[k - 1]) for k in keep if INPUT < k < OUTPUT),
        edges=tuple((int(i), int(j)) for i, j in zip(*np.nonzero(matrix))),
        n_stacks=interval_choice(g[26], N_STACKS),
        n_modules=interval_choice(g[27], N_MODULES),
        n_f_init=interval_choice(g[28], N_F_INIT),
    )
    if n_edges > MAX_EDGES:
        return Decoded(None, False, f"{n_edges} edges after pruning exceed the limit of {MAX_EDGES}",
                       EDGE_VIOLATION_BASE + (n_edges - MAX_EDGES) / MAX_EDGES)
    return Decoded(arch, True)


class CellSpace:
    """The search space the ODE Searcher explores: 29 genes, decoded by :func:`decode`."""

    dims = N_GENES
    name = "cell3d"

    def decode(self, genome) -> Decoded:
        return decode(genome)

    def config(self, decoded: Decoded) -> dict:
        return {"architecture": decoded.architecture.to_config()}
