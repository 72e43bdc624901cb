"""The cell network (Table 1 ops, Fig. 1 macro structure) and its complexity counters."""
import numpy as np
import pytest
import torch

from medcore.cell_genotype import OPERATIONS, CellArchitecture
from medcore.records import DatasetInfo
from searchers import cell_space as cs
from trainables.complexity import count_flops, count_params
from trainables.nets.cell_net import OPS, CellNet
from trainables.ode_trial import CandidateCost


def arch(nodes, edges, s=1, m=1, f=8):
    return CellArchitecture(nodes=tuple(nodes), edges=tuple(edges), n_stacks=s, n_modules=m, n_f_init=f)


def test_ops_table_matches_table_1_layer_order():
    assert set(OPS) == set(OPERATIONS)
    layers = [type(m).__name__ for m in OPS["conv5_in_mish"](3, 4)]
    assert layers == ["Conv3d", "InstanceNorm3d", "Mish"] and OPS["conv5_in_mish"](3, 4)[0].kernel_size == (5, 5, 5)
    assert [type(m).__name__ for m in OPS["in_mish_conv7"](3, 4)] == ["InstanceNorm3d", "Mish", "Conv3d"]
    assert [type(m).__name__ for m in OPS["relu_conv3"](2, 4)] == ["ReLU", "Conv2d"]


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_shapes_and_downsampling(dims):
    a = arch([(1, "conv3_in_relu"), (2, "mish_conv3")], [(0, 1), (0, 6), (1, 2), (2, 6)], s=2, m=2, f=8)
    net = CellNet(a, in_channels=3 if dims == 2 else 1, n_outputs=4, spatial_dims=dims)
    x = torch.rand((2, 3 if dims == 2 else 1) + (16,) * dims)
    assert net(x).shape == (2, 4)
    assert net.head.in_features == 16  # channels doubled once for the second stack
    assert sum(isinstance(m, (torch.nn.MaxPool2d, torch.nn.MaxPool3d)) for m in net.modules()) == 1


def test_flops_counted_by_hand_for_a_tiny_net():
    a = arch([(1, "relu_conv3")], [(0, 1), (0, 6), (1, 6)], f=8)
    net = CellNet(a, 1, 1, spatial_dims=3)
    voxels = 8 ** 3
    stem = 2 * 1 * 8 * 27 * voxels
    node = 2 * 8 * 8 * 27 * voxels
    head = 2 * 8 * 1
    assert count_flops(net, (1, 8, 8, 8)) == stem + node + head
    assert count_params(net) == 27 * 8 + 2 * 8 + 27 * 64 + 8 + 1


def test_meta_device_flops_equal_real_count():
    info = DatasetInfo("t", "binary-class", n_channels=1, n_classes=2, spatial_dims=3, size=12, synthetic=True,
                       path="")
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = cs.decode(rng.random(29))
        if d.feasible:
            cfg = {"architecture": d.architecture.to_config()}
            real = count_flops(CellNet(d.architecture, 1, 1, 3), (1, 12, 12, 12))
            assert CandidateCost(info, batch_size=2, n_train=8).flops(cfg) == real
