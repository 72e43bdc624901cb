"""The networks built through MONAI's layer factories (``Conv``/``Norm``/``Pool`` by spatial dims)
are the same torch modules, with the same arguments and the same initial weights, as the
``if spatial_dims == 3`` switches they replaced (issue 23).

``FINGERPRINTS`` were recorded on the pre-change code (commit 15d845a) under
``torch.manual_seed(0)``: per network, its parameter count, the sum of each ``state_dict``
tensor (buffers included, in order) and how many modules of each class it holds.
"""
from collections import Counter

import pytest
import torch

from medcore.cell_genotype import CellArchitecture
from trainables.nets.cell_net import CellNet
from trainables.nets.tiny_cnn import TinyCNN
from trainables.strategy import make_norm, replace_norm

# every layer order of Table 1, two stacks (a pool and a projecting cell)
ARCH = CellArchitecture(
    nodes=((1, "conv3_in_relu"), (2, "conv5_in_mish"), (3, "in_mish_conv3"), (4, "relu_conv3"), (5, "mish_conv5")),
    edges=((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (0, 6)), n_stacks=2, n_modules=1, n_f_init=4)


def _tiny_cnn_instance(dims):
    model = TinyCNN(1, 2, dims, widths=(4, 8))
    replace_norm(model, "instance", dims)
    return model


BUILDS = {
    "cell_net": lambda dims: CellNet(ARCH, 1, 3, dims),
    "tiny_cnn": lambda dims: TinyCNN(1, 2, dims, widths=(4, 8)),
    "norm_batch": lambda dims: make_norm("batch", 6, dims),
    "norm_instance": lambda dims: make_norm("instance", 6, dims),
    "tiny_cnn_instance": _tiny_cnn_instance,
}

_CELL_MODULES = {"Cell": 2, "CellNet": 1, "Identity": 1, "Linear": 1, "Mish": 6, "ModuleDict": 2, "ReLU": 5,
                 "Sequential": 12}
_TINY_MODULES = {"Linear": 1, "ReLU": 2, "Sequential": 1, "TinyCNN": 1}
FINGERPRINTS = {  # recorded on the pre-change code, see the module docstring
    (2, "cell_net"): (6335, [
        -1.433792, 4.0, 0.0, 0.0, 4.0, 0.0, -0.981896, 4.0, 0.0, 0.447372, 4.0, 0.0, 4.0, 0.0, 0.395678, 0.499119,
        -1.502412, 0.786238, 1.508075, 8.0, 0.0, -1.65352, 8.0, 0.0, 8.0, 0.0, -1.673064, -0.243371, -0.087497,
        0.505212, -0.069246],
        {**_CELL_MODULES, "BatchNorm2d": 1, "Conv2d": 12, "InstanceNorm2d": 6, "MaxPool2d": 1}),
    (3, "cell_net"): (26727, [
        -0.74752, 4.0, 0.0, 0.0, 4.0, 0.0, -0.161068, 4.0, 0.0, -0.308001, 4.0, 0.0, 4.0, 0.0, -0.385237, -0.327282,
        -1.236645, 0.903688, 1.590481, 8.0, 0.0, 2.111329, 8.0, 0.0, 8.0, 0.0, 1.774116, 0.044309, 1.510829,
        0.89857, -0.678087],
        {**_CELL_MODULES, "BatchNorm3d": 1, "Conv3d": 12, "InstanceNorm3d": 6, "MaxPool3d": 1}),
    (2, "tiny_cnn"): (366, [
        -1.433792, 4.0, 0.0, 0.0, 4.0, 0.0, -1.78653, 8.0, 0.0, 0.0, 8.0, 0.0, 1.889248, -0.205132],
        {**_TINY_MODULES, "BatchNorm2d": 2, "Conv2d": 2, "MaxPool2d": 2}),
    (3, "tiny_cnn"): (1014, [
        -0.74752, 4.0, 0.0, 0.0, 4.0, 0.0, 0.497228, 8.0, 0.0, 0.0, 8.0, 0.0, -0.29145, 0.088013],
        {**_TINY_MODULES, "BatchNorm3d": 2, "Conv3d": 2, "MaxPool3d": 2}),
    (2, "norm_batch"): (12, [6.0, 0.0, 0.0, 6.0, 0.0], {"BatchNorm2d": 1}),
    (3, "norm_batch"): (12, [6.0, 0.0, 0.0, 6.0, 0.0], {"BatchNorm3d": 1}),
    (2, "norm_instance"): (12, [6.0, 0.0], {"InstanceNorm2d": 1}),
    (3, "norm_instance"): (12, [6.0, 0.0], {"InstanceNorm3d": 1}),
    (2, "tiny_cnn_instance"): (366, [-1.433792, 4.0, 0.0, -1.78653, 8.0, 0.0, 1.889248, -0.205132],
                               {**_TINY_MODULES, "Conv2d": 2, "InstanceNorm2d": 2, "MaxPool2d": 2}),
    (3, "tiny_cnn_instance"): (1014, [-0.74752, 4.0, 0.0, 0.497228, 8.0, 0.0, -0.29145, 0.088013],
                               {**_TINY_MODULES, "Conv3d": 2, "InstanceNorm3d": 2, "MaxPool3d": 2}),
}


@pytest.mark.parametrize("dims, name", sorted(FINGERPRINTS))
def test_networks_match_their_pre_factory_fingerprint(dims, name):
    torch.manual_seed(0)
    model = BUILDS[name](dims)
    n_params, sums, modules = FINGERPRINTS[dims, name]
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert [float(t.double().sum()) for t in model.state_dict().values()] == pytest.approx(sums, abs=1e-5)
    assert Counter(type(m).__name__ for m in model.modules()) == modules
