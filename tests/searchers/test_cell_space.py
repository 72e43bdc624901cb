"""Decoding checked by hand against the paper's mapping (2.2, Table 1, Fig. 2)."""
import numpy as np
import pytest

from medcore.cell_genotype import OPERATIONS, CellArchitecture
from searchers import cell_space as cs


def genome(edges=(), ops=(0.0,) * 5, macro=(0.0, 0.0, 0.0)):
    """Genes with exactly ``edges`` present (gene 0.2 = edge, 0.8 = no edge)."""
    g = np.full(29, 0.8)
    for e in edges:
        g[cs.EDGE_INDEX.index(e)] = 0.2
    g[21:26] = ops
    g[26:29] = macro
    return g


def test_edge_gene_order_is_row_major_upper_triangle():
    assert cs.EDGE_INDEX[0] == (0, 1)  # "the first element: Node 1 -> Node 2"
    assert cs.EDGE_INDEX[5] == (0, 6)
    assert cs.EDGE_INDEX[6] == (1, 2)
    assert cs.EDGE_INDEX[-1] == (5, 6)
    assert len(cs.EDGE_INDEX) == 21


def test_gene_below_half_places_an_edge_and_input_output_is_forced():
    m = cs.adjacency(genome(edges=[(0, 1)]))
    assert m[0, 1] == 1 and m[0, 6] == 1 and m.sum() == 2
    g = genome()
    g[0] = 0.5  # [0, 0.5) is an edge, 0.5 is not
    assert cs.adjacency(g)[0, 1] == 0


def test_hand_decoded_chain():
    # input -> 1 -> 2 -> output, ops: gene 0.07 -> 2nd op (0.067 boundary), 0.99 -> 15th.
    d = cs.decode(genome(edges=[(0, 1), (1, 2), (2, 6)], ops=(0.07, 0.99, 0.5, 0.0, 0.0), macro=(0.49, 0.5, 0.7)))
    a = d.architecture
    assert d.feasible
    assert a.nodes == ((1, "conv5_in_relu"), (2, "mish_conv7"))
    assert a.edges == ((0, 1), (0, 6), (1, 2), (2, 6))
    assert (a.n_stacks, a.n_modules, a.n_f_init) == (1, 2, 32)


@pytest.mark.parametrize("value,expected", [(0.0, 8), (0.333, 8), (0.334, 16), (0.666, 16), (0.667, 32), (1.0, 32)])
def test_n_f_init_interval_mapping(value, expected):
    assert cs.decode(genome(macro=(0, 0, value))).architecture.n_f_init == expected


@pytest.mark.parametrize("value,index", [(0.0, 0), (0.0666, 0), (0.0667, 1), (0.5, 7), (0.9333, 13), (0.9334, 14), (1.0, 14)])
def test_operation_interval_mapping(value, index):
    d = cs.decode(genome(edges=[(0, 1), (1, 6)], ops=(value, 0, 0, 0, 0)))
    assert d.architecture.nodes == ((1, OPERATIONS[index]),)


def test_table1_has_15_operations_in_paper_order():
    assert len(OPERATIONS) == 15
    assert OPERATIONS[0] == "conv3_in_relu" and OPERATIONS[6] == "in_mish_conv3"
    assert OPERATIONS[9] == "relu_conv3" and OPERATIONS[14] == "mish_conv7"


def test_nodes_off_the_input_output_path_are_pruned():
    # node 3 has no input, node 4 has no output: both dropped with their edges.
    d = cs.decode(genome(edges=[(0, 1), (1, 6), (3, 6), (0, 4)]))
    assert [n for n, _ in d.architecture.nodes] == [1]
    assert d.architecture.edges == ((0, 1), (0, 6), (1, 6))


def test_edge_limit_counts_edges_after_pruning():
    nine = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 6), (2, 3), (2, 6), (3, 6)]  # + forced (0,6) = 9
    assert cs.decode(genome(edges=nine)).feasible
    ten = nine + [(1, 3)]
    d = cs.decode(genome(edges=ten))
    assert not d.feasible and "10 edges" in d.reason and d.architecture is None
    # an extra edge into a dead node does not count
    assert cs.decode(genome(edges=nine + [(4, 5)])).feasible


def test_identical_architectures_share_a_key_and_round_trip():
    a = cs.decode(genome(edges=[(0, 1), (1, 6)], ops=(0.01, 0.3, 0.3, 0.3, 0.3)))
    b = cs.decode(genome(edges=[(0, 1), (1, 6)], ops=(0.02, 0.9, 0.9, 0.9, 0.9)))  # dead nodes' ops differ
    assert a.key == b.key
    assert CellArchitecture.from_config(a.architecture.to_config()) == a.architecture


def test_isomorphic_cells_share_a_key_and_different_cells_do_not():
    def arch(nodes, edges):
        return CellArchitecture(nodes=tuple(nodes), edges=tuple(edges), n_stacks=2, n_modules=1, n_f_init=8)

    on2 = arch([(2, "conv3_in_mish")], [(0, 2), (0, 6), (2, 6)])
    on3 = arch([(3, "conv3_in_mish")], [(0, 3), (0, 6), (3, 6)])
    assert on2.key == on3.key and on2 != on3
    # two parallel branches, their node labels swapped
    a = arch([(1, "relu_conv3"), (2, "mish_conv5")], [(0, 1), (0, 2), (0, 6), (1, 6), (2, 6)])
    b = arch([(1, "mish_conv5"), (2, "relu_conv3")], [(0, 1), (0, 2), (0, 6), (1, 6), (2, 6)])
    assert a.key == b.key
    # a chain is not the parallel form, the order of a chain matters, and so do ops and macro variables
    chain = arch([(1, "relu_conv3"), (2, "mish_conv5")], [(0, 1), (1, 2), (0, 6), (2, 6)])
    flipped = arch([(1, "mish_conv5"), (2, "relu_conv3")], [(0, 1), (1, 2), (0, 6), (2, 6)])
    assert len({a.key, chain.key, flipped.key}) == 3
    assert on2.key != arch([(2, "conv5_in_mish")], [(0, 2), (0, 6), (2, 6)]).key
    assert on2.key != CellArchitecture(on2.nodes, on2.edges, 1, 1, 8).key


def test_bad_genomes_are_refused():
    with pytest.raises(ValueError, match="29 genes"):
        cs.decode(np.zeros(28))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cs.decode(np.full(29, 1.5))


def test_a_cell_encodes_as_its_adjacency_operations_and_macro_variables():
    """The zoo's ``cell3d`` encoding (99 numbers) is a method of the record it encodes."""
    from medcore.cell_genotype import N_NODES, OPERATIONS, CellArchitecture

    arch = CellArchitecture(nodes=((1, OPERATIONS[2]), (3, OPERATIONS[0])), edges=((0, 1), (1, 3), (3, 6)),
                            n_stacks=2, n_modules=1, n_f_init=16)
    vec = arch.encoding()
    n_pairs = N_NODES * (N_NODES - 1) // 2
    assert len(vec) == n_pairs + 5 * len(OPERATIONS) + 3 == 99
    pairs = [(i, j) for i in range(N_NODES) for j in range(i + 1, N_NODES)]
    assert [pairs[k] for k, bit in enumerate(vec[:n_pairs]) if bit] == [(0, 1), (1, 3), (3, 6)]
    onehot = [vec[n_pairs + k * len(OPERATIONS):n_pairs + (k + 1) * len(OPERATIONS)] for k in range(5)]
    assert [row.index(1.0) if 1.0 in row else None for row in onehot] == [2, None, 0, None, None]
    assert vec[-3:] == [2.0, 1.0, 16.0]
    assert CellArchitecture.from_config(arch.to_config()).encoding() == vec
