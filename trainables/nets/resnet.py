"""ResNet-10/18/34/50 from MONAI, 2D or 3D, as the base networks of the compression search.

The compression paper (section 4.2) trains an untrained PyTorch ResNet-50 with the
MedMNIST recipe; MedMNIST benchmarks ResNet-18 and ResNet-50. MONAI's ``ResNet`` gives the
same bottleneck/basic blocks for ``spatial_dims`` 2 and 3. Two choices are fixed here so
the networks match torchvision's (the paper's) and stay quantizable:

* ``shortcut_type="B"`` (1x1 conv + BN projection shortcuts, as torchvision) -- MONAI's
  type "A" zero-pads with ``torch.cat`` on ``.data``, which is neither torchvision's
  ResNet nor an op the int8 backends fuse;
* ``bias_downsample=False``: torchvision's ResNets have no convolution biases at all
  (every conv is followed by BN), so conv bias pruning (x6 = 1) is a no-op, as in the paper.

Stems (the first conv and max-pool), both offered by MONAI's arguments:

* ``"medmnist"``: 3x3 conv, stride 1, no max-pool -- the 28 px recipe of MedMNIST's own
  ResNets; a 28x28 image keeps its resolution into ``layer1`` (28 -> 28 -> 14 -> 7 -> 4).
* ``"imagenet"``: 7x7 conv, stride 2, then 3x3/2 max-pool -- torchvision's stem, i.e. the
  untouched "ResNet50 from PyTorch" the paper loaded (28 px -> 7 px into ``layer1``).

``stem=None`` picks ``"medmnist"`` for 2D and ``"imagenet"`` for 3D: at 28^3 the
full-resolution stem makes ResNet-18 cost 35.5 GFLOPs per volume (0.77 with the
ImageNet stem; measured with ``trainables.complexity.count_flops``), which no CPU budget
trains. The resolved stem is part of the build args stored with every checkpoint.
"""
from __future__ import annotations

from monai.networks.nets import resnet10, resnet18, resnet34, resnet50
from torch import nn

from medcore.errors import ConfigError

# name -> MONAI constructor (all take spatial_dims / n_input_channels / num_classes).
# resnet10 (one basic block per stage, MedicalNet's smallest) is the CPU-sized choice.
RESNETS = {"resnet10": resnet10, "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}

STEMS = {
    "medmnist": {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True},
    "imagenet": {"conv1_t_size": 7, "conv1_t_stride": 2, "no_max_pool": False},
}


def default_stem(spatial_dims: int) -> str:
    """The stem used when none is given: full resolution in 2D, torchvision's in 3D."""
    return "medmnist" if spatial_dims == 2 else "imagenet"


def build_resnet(name: str, spatial_dims: int, in_channels: int, n_outputs: int,
                 stem: str | None = None) -> nn.Module:
    """A randomly initialised MONAI ResNet ``name`` with ``n_outputs`` logits (paper 4.2)."""
    key = str(name).lower()
    if key not in RESNETS:
        raise ConfigError(f"unknown model '{name}'; known models: {', '.join(sorted(RESNETS))}")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3 for {key}, got {spatial_dims}")
    stem = default_stem(spatial_dims) if stem is None else stem
    if stem not in STEMS:
        raise ConfigError(f"unknown ResNet stem '{stem}'; known stems: {', '.join(sorted(STEMS))}")
    return RESNETS[key](spatial_dims=spatial_dims, n_input_channels=int(in_channels),
                        num_classes=int(n_outputs), shortcut_type="B", bias_downsample=False,
                        **STEMS[stem])
