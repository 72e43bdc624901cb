"""The networks built through MONAI's layer factories (``Conv``/``Norm``/``Pool`` by spatial dims)
are the same torch modules, with the same arguments and the same initial weights, as the
``if spatial_dims == 3`` switches they replaced (issue 23).

``FINGERPRINTS`` were recorded on the pre-change code (commit 15d845a; the OFA ResNet's on
f08544a) under ``torch.manual_seed(0)``: per network, its parameter count, the sum of each
``state_dict`` tensor (buffers included, in order) and how many modules of each class it holds.
Strides and paddings leave no trace here; for the OFA subnet they are checked by
``test_ofa_supernet.py``, whose extracted (static) subnets must equal the supernet's forward.
"""
from collections import Counter

import pytest
import torch

from medcore.cell_genotype import CellArchitecture
from trainables.nets.cell_net import CellNet
from trainables.nets.ofa_resnet import OFAResNet, OFASpace, ResNetSubnet
from trainables.nets.tiny_cnn import TinyCNN
from trainables.strategy import make_norm, replace_norm

# every layer order of Table 1, two stacks (a pool and a projecting cell)
ARCH = CellArchitecture(
    nodes=((1, "conv3_in_relu"), (2, "conv5_in_mish"), (3, "in_mish_conv3"), (4, "relu_conv3"), (5, "mish_conv5")),
    edges=((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (0, 6)), n_stacks=2, n_modules=1, n_f_init=4)


# the OFA supernet cut to two stages of one block each (a stride-2 stage included)
OFA_SPACE = OFASpace(base_depths=(1, 1), depth_choices=(0,))


def _ofa_supernet(dims):
    return OFAResNet(dims, 1, 3, 28, space=OFA_SPACE)


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
    "ofa_supernet": _ofa_supernet,
    "ofa_extracted": lambda dims: _ofa_supernet(dims).extract(OFA_SPACE.smallest()),
    "ofa_subnet": lambda dims: ResNetSubnet(OFA_SPACE.smallest(), dims, 1, 3, 28),
}

_CELL_MODULES = {"Cell": 2, "CellNet": 1, "Identity": 1, "Linear": 1, "Mish": 6, "ModuleDict": 2, "ReLU": 5,
                 "Sequential": 12}
_TINY_MODULES = {"Linear": 1, "ReLU": 2, "Sequential": 1, "TinyCNN": 1}
_OFA_SUPERNET_MODULES = {"DynamicBatchNorm": 9, "DynamicBottleneck": 2, "DynamicConv": 9, "DynamicLinear": 1,
                         "Linear": 1, "ModuleList": 3, "OFAResNet": 1}
_OFA_SUBNET_MODULES = {"Bottleneck": 2, "Linear": 1, "ModuleList": 3, "ResNetSubnet": 1}
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
    (2, "ofa_supernet"): (13259, [
        0.544105, 24.0, 0.0, 0.0, 24.0, 0.0, -7.765387, 12.0, 0.0, 0.0, 12.0, 0.0, 4.18434, 12.0, 0.0, 0.0,
        12.0, 0.0, 2.905571, 32.0, 0.0, 0.0, 32.0, 0.0, -12.267069, 32.0, 0.0, 0.0, 32.0, 0.0, 5.068071, 24.0,
        0.0, 0.0, 24.0, 0.0, -11.466305, 24.0, 0.0, 0.0, 24.0, 0.0, 3.739116, 64.0, 0.0, 0.0, 64.0, 0.0,
        -6.030983, 64.0, 0.0, 0.0, 64.0, 0.0, -0.935248, 0.085494],
        _OFA_SUPERNET_MODULES),
    (3, "ofa_supernet"): (26651, [
        2.344483, 24.0, 0.0, 0.0, 24.0, 0.0, -1.945745, 12.0, 0.0, 0.0, 12.0, 0.0, -1.352553, 12.0, 0.0, 0.0,
        12.0, 0.0, -0.241253, 32.0, 0.0, 0.0, 32.0, 0.0, -8.933867, 32.0, 0.0, 0.0, 32.0, 0.0, 8.389012, 24.0,
        0.0, 0.0, 24.0, 0.0, -6.778864, 24.0, 0.0, 0.0, 24.0, 0.0, -7.021541, 64.0, 0.0, 0.0, 64.0, 0.0,
        -12.223342, 64.0, 0.0, 0.0, 64.0, 0.0, 0.035407, 0.043427],
        _OFA_SUPERNET_MODULES),
    (2, "ofa_extracted"): (3331, [
        0.544105, 24.0, 0.0, 0.0, 24.0, 0.0, -3.556927, 4.0, 0.0, 0.0, 4.0, 0.0, 2.826777, 4.0, 0.0, 0.0, 4.0,
        0.0, 2.837831, 20.0, 0.0, 0.0, 20.0, 0.0, -4.801033, 20.0, 0.0, 0.0, 20.0, 0.0, -0.511618, 8.0, 0.0,
        0.0, 8.0, 0.0, -1.225691, 8.0, 0.0, 0.0, 8.0, 0.0, 1.089843, 40.0, 0.0, 0.0, 40.0, 0.0, -4.524715, 40.0,
        0.0, 0.0, 40.0, 0.0, -0.893324, 0.085494],
        {**_OFA_SUBNET_MODULES, "BatchNorm2d": 9, "Conv2d": 9}),
    (3, "ofa_extracted"): (5203, [
        2.344483, 24.0, 0.0, 0.0, 24.0, 0.0, -0.551162, 4.0, 0.0, 0.0, 4.0, 0.0, -0.131221, 4.0, 0.0, 0.0, 4.0,
        0.0, -0.037113, 20.0, 0.0, 0.0, 20.0, 0.0, -5.006239, 20.0, 0.0, 0.0, 20.0, 0.0, 8.009666, 8.0, 0.0,
        0.0, 8.0, 0.0, -0.695519, 8.0, 0.0, 0.0, 8.0, 0.0, -2.770254, 40.0, 0.0, 0.0, 40.0, 0.0, -5.198959,
        40.0, 0.0, 0.0, 40.0, 0.0, 0.092803, 0.043427],
        {**_OFA_SUBNET_MODULES, "BatchNorm3d": 9, "Conv3d": 9}),
    (2, "ofa_subnet"): (3331, [
        -1.988481, 24.0, 0.0, 0.0, 24.0, 0.0, 9.835279, 4.0, 0.0, 0.0, 4.0, 0.0, -0.493831, 4.0, 0.0, 0.0, 4.0,
        0.0, -0.604862, 20.0, 0.0, 0.0, 20.0, 0.0, -2.618621, 20.0, 0.0, 0.0, 20.0, 0.0, 2.80002, 8.0, 0.0, 0.0,
        8.0, 0.0, -1.678138, 8.0, 0.0, 0.0, 8.0, 0.0, -1.70366, 40.0, 0.0, 0.0, 40.0, 0.0, -16.551751, 40.0,
        0.0, 0.0, 40.0, 0.0, 1.387364, -0.004861],
        {**_OFA_SUBNET_MODULES, "BatchNorm2d": 9, "Conv2d": 9}),
    (3, "ofa_subnet"): (5203, [
        -0.224562, 24.0, 0.0, 0.0, 24.0, 0.0, -5.395538, 4.0, 0.0, 0.0, 4.0, 0.0, -4.829078, 4.0, 0.0, 0.0, 4.0,
        0.0, -1.32133, 20.0, 0.0, 0.0, 20.0, 0.0, 10.840897, 20.0, 0.0, 0.0, 20.0, 0.0, -11.97113, 8.0, 0.0,
        0.0, 8.0, 0.0, -8.619639, 8.0, 0.0, 0.0, 8.0, 0.0, -5.844663, 40.0, 0.0, 0.0, 40.0, 0.0, -5.927579,
        40.0, 0.0, 0.0, 40.0, 0.0, 0.662145, -0.378491],
        {**_OFA_SUBNET_MODULES, "BatchNorm3d": 9, "Conv3d": 9}),
}


@pytest.mark.parametrize("dims, name", sorted(FINGERPRINTS))
def test_networks_match_their_pre_factory_fingerprint(dims, name):
    torch.manual_seed(0)
    model = BUILDS[name](dims)
    n_params, sums, modules = FINGERPRINTS[dims, name]
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert [float(t.double().sum()) for t in model.state_dict().values()] == pytest.approx(sums, abs=1e-5)
    assert Counter(type(m).__name__ for m in model.modules()) == modules
