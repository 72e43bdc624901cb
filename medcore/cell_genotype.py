"""The decoded cell of the 3D cell-based CNN search (ODE paper 2.1-2.2, Table 1, Fig. 1): one record.

A cell is a DAG over :data:`N_NODES` nodes: an input node :data:`INPUT`, five intermediate
nodes, each applying one of Table 1's :data:`OPERATIONS`, and an output node :data:`OUTPUT`
(NAS-Bench-101's |N| = 7, which the paper adopts, with at most :data:`MAX_EDGES` edges). The
network stacks ``n_modules`` cells in each of ``n_stacks`` stacks, starting from ``n_f_init``
feature maps. ``searchers.cell_space`` decodes genomes into :class:`CellArchitecture`;
``trainables.nets.cell_net`` builds the network from it.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass

N_NODES = 7
INPUT, OUTPUT = 0, N_NODES - 1
MAX_EDGES = 9

# Table 1, in order: the name says the layer order (conv k, IN = instance norm, activation).
OPERATIONS = (
    "conv3_in_relu", "conv5_in_relu", "conv7_in_relu",
    "conv3_in_mish", "conv5_in_mish", "conv7_in_mish",
    "in_mish_conv3", "in_mish_conv5", "in_mish_conv7",
    "relu_conv3", "relu_conv5", "relu_conv7",
    "mish_conv3", "mish_conv5", "mish_conv7",
)
# Choices of the three macro decision variables (paper 2.2).
N_STACKS = (1, 2)
N_MODULES = (1, 2)
N_F_INIT = (8, 16, 32)


@dataclass(frozen=True)
class CellArchitecture:
    """A decoded genome: the pruned cell DAG plus the three macro decision variables."""

    nodes: tuple  # ((node index 1..5, operation name), ...) for nodes kept after pruning
    edges: tuple  # ((i, j), ...) kept edges, i < j, node indices 0..6
    n_stacks: int
    n_modules: int
    n_f_init: int

    @property
    def key(self) -> str:
        """Identity used to train each distinct architecture only once: the same for isomorphic
        cells (NAS-Bench-101 de-duplicates its space by graph isomorphism the same way), e.g. one
        operation on node 2 or on node 3 of an otherwise empty cell builds the same network.

        The canonical form is the smallest (operations, edges) over every relabelling of the kept
        intermediate nodes (at most 5! = 120), input and output fixed."""
        inner = [i for i, _ in self.nodes]
        ops = dict(self.nodes)
        best = None
        for perm in itertools.permutations(range(1, len(inner) + 1)):
            new = {INPUT: INPUT, OUTPUT: OUTPUT, **dict(zip(inner, perm))}
            form = (sorted((new[i], ops[i]) for i in inner), sorted((new[i], new[j]) for i, j in self.edges))
            best = form if best is None or form < best else best
        return json.dumps({"nodes": best[0], "edges": best[1], "n_stacks": self.n_stacks,
                           "n_modules": self.n_modules, "n_f_init": self.n_f_init}, sort_keys=True)

    def to_config(self) -> dict:
        d = asdict(self)
        d["nodes"] = [list(n) for n in self.nodes]
        d["edges"] = [list(e) for e in self.edges]
        return d

    @classmethod
    def from_config(cls, d: dict) -> "CellArchitecture":
        return cls(nodes=tuple((int(i), str(op)) for i, op in d["nodes"]),
                   edges=tuple((int(i), int(j)) for i, j in d["edges"]),
                   n_stacks=int(d["n_stacks"]), n_modules=int(d["n_modules"]), n_f_init=int(d["n_f_init"]))

    def encoding(self) -> list[float]:
        """Fixed-length numeric encoding (zoo ``cell3d`` family, 99 numbers): the 21 upper-triangle
        adjacency bits, a one-hot operation per intermediate node (5 x 15), then n_stacks,
        n_modules and n_f_init."""
        pairs = [(i, j) for i in range(N_NODES) for j in range(i + 1, N_NODES)]
        edges = set(self.edges)
        ops = dict(self.nodes)
        vec = [float(p in edges) for p in pairs]
        for node in range(1, N_NODES - 1):
            vec += [float(ops.get(node) == op) for op in OPERATIONS]
        return vec + [float(self.n_stacks), float(self.n_modules), float(self.n_f_init)]

    def describe(self) -> str:
        ops = ",".join(f"{i}:{op}" for i, op in self.nodes) or "-"
        edges = " ".join(f"{i}>{j}" for i, j in self.edges)
        return f"S{self.n_stacks}M{self.n_modules}F{self.n_f_init} ops[{ops}] edges[{edges}]"
