"""An OFA-style ResNet supernet (MedNNS section 2 A.1), 2D or 3D through ``spatial_dims``.

The supernet ``S(x; Theta)`` holds the largest network; a subnet ``s(x; m * Theta)`` is a
:class:`SubnetConfig` that selects, per stage, how many bottleneck blocks run (elastic depth:
``base_depth + {0, 1, 2}``, trailing blocks dropped), per block the expand ratio of the middle
channels (``{0.2, 0.25, 0.35}`` of the block's output width, OFA-ResNet50's list) and per stage
the width multiplier (``{0.65, 0.8, 1.0}``). Convolutions, BatchNorms and the classifier are
weight-slicing dynamic layers: a subnet uses the first channels of every weight, so before
the elastic phase the middle channels are re-ordered by importance (L1 norm of the consumer's
weights, OFA's ``re_organize_middle_weights``) so the first channels are the most useful.

Sized for 28/64 px MedMNIST inputs on a CPU: stage widths (32, 64, 128, 256), one base block
per stage, a 3x3 stem that keeps 28 px 2D images at full resolution and halves 64 px and 3D
inputs (:func:`default_stem`). :meth:`OFAResNet.extract` returns a standalone network of plain
``nn.Conv``/``nn.BatchNorm`` layers whose outputs equal the supernet's with that config active.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from medcore.errors import ConfigError

STAGE_WIDTHS = (32, 64, 128, 256)
STAGE_STRIDES = (1, 2, 2, 2)
BASE_DEPTHS = (1, 1, 1, 1)
DEPTH_CHOICES = (0, 1, 2)  # extra blocks per stage (OFA-ResNet50's depth list)
EXPAND_CHOICES = (0.2, 0.25, 0.35)
WIDTH_CHOICES = (0.65, 0.8, 1.0)
STEM_CHANNELS = 24
DIVISOR = 4
SUPERNET_FILE = "supernet.pt"
SUPERNET_META = "supernet.json"


def make_divisible(v: float, divisor: int = DIVISOR) -> int:
    """Round ``v`` to a multiple of ``divisor`` without losing more than 10 % (OFA / MobileNet)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def default_stem(spatial_dims: int, size: int) -> tuple[int, bool]:
    """(stem stride, max-pool after the stem): 28 px 2D keeps full resolution; 64 px 2D and
    28^3 3D are halved; 64^3 3D is quartered (stride 2 + 2x max-pool)."""
    if spatial_dims == 2:
        return (1, False) if size <= 32 else (2, False)
    return (2, False) if size <= 32 else (2, True)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: active blocks per stage, expand ratio per block, width multiplier per stage.

    ``depths[s]`` counts the active blocks of stage s; ``expands[s][i]`` is block i's ratio
    (blocks past the depth are inactive: :meth:`canonical` sets them to 0 so equal networks
    have equal records); ``widths[s]`` is stage s's multiplier.
    """

    depths: tuple
    expands: tuple
    widths: tuple

    def canonical(self) -> "SubnetConfig":
        expands = tuple(tuple(e if i < d else 0.0 for i, e in enumerate(row)) for d, row in zip(self.depths, self.expands))
        return dataclasses.replace(self, expands=expands)

    def encoding(self) -> list[float]:
        """The architecture encoding of A.2: the flattened config (inactive blocks as 0)."""
        c = self.canonical()
        return [float(d) for d in c.depths] + [float(e) for row in c.expands for e in row] + [float(w) for w in c.widths]

    def to_dict(self) -> dict:
        return {"depths": list(self.depths), "expands": [list(r) for r in self.expands], "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> "SubnetConfig":
        try:
            return cls(tuple(int(v) for v in d["depths"]), tuple(tuple(float(e) for e in r) for r in d["expands"]),
                       tuple(float(w) for w in d["widths"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a subnet config ({type(exc).__name__}: {exc}): {d!r}") from None


@dataclass(frozen=True)
class OFASpace:
    """The elastic slots of a supernet and their choices (what strict fairness permutes)."""

    base_depths: tuple = BASE_DEPTHS
    depth_choices: tuple = DEPTH_CHOICES
    expand_choices: tuple = EXPAND_CHOICES
    width_choices: tuple = WIDTH_CHOICES

    @property
    def n_stages(self) -> int:
        return len(self.base_depths)

    def max_blocks(self, stage: int) -> int:
        return self.base_depths[stage] + max(self.depth_choices)

    def slots(self) -> list[tuple]:
        """(kind, stage, block, choices) of every elastic slot."""
        out = [("depth", s, None, tuple(self.base_depths[s] + c for c in self.depth_choices)) for s in range(self.n_stages)]
        out += [("expand", s, i, self.expand_choices) for s in range(self.n_stages) for i in range(self.max_blocks(s))]
        out += [("width", s, None, self.width_choices) for s in range(self.n_stages)]
        return out

    def from_slots(self, values: list) -> SubnetConfig:
        it = iter(values)
        depths = tuple(next(it) for _ in range(self.n_stages))
        expands = tuple(tuple(next(it) for _ in range(self.max_blocks(s))) for s in range(self.n_stages))
        widths = tuple(next(it) for _ in range(self.n_stages))
        return SubnetConfig(depths, expands, widths)

    def largest(self) -> SubnetConfig:
        return self.from_slots([max(c) for *_, c in self.slots()])

    def smallest(self) -> SubnetConfig:
        return self.from_slots([min(c) for *_, c in self.slots()])

    def sample(self, generator: torch.Generator) -> SubnetConfig:
        values = [c[int(torch.randint(len(c), (1,), generator=generator))] for *_, c in self.slots()]
        return self.from_slots(values)

    def check(self, config: SubnetConfig) -> SubnetConfig:
        slots = self.slots()
        values = list(config.depths) + [e for row in config.expands for e in row] + list(config.widths)
        # the count first: from_slots on too few values would end a generator early (a RuntimeError)
        if len(values) != len(slots) or self.from_slots(values) != config:
            raise ConfigError(f"subnet config {config.to_dict()} does not fit the supernet's slots")
        for (kind, s, i, choices), v in zip(slots, values):
            if kind == "expand" and i >= config.depths[s] and v == 0.0:
                continue
            if v not in choices:
                raise ConfigError(f"{kind} {v} of stage {s} is not one of {choices}")
        return config


def stage_width(stage: int, multiplier: float) -> int:
    return make_divisible(STAGE_WIDTHS[stage] * multiplier)


def middle_width(out_channels: int, expand: float) -> int:
    return make_divisible(round(out_channels * expand))


def _conv_fn(spatial_dims: int):
    return F.conv2d if spatial_dims == 2 else F.conv3d


class DynamicConv(nn.Module):
    """A convolution whose weight is sliced to the active (out, in) channels."""

    def __init__(self, in_max: int, out_max: int, kernel: int, stride: int, spatial_dims: int):
        super().__init__()
        self.stride, self.padding, self.spatial_dims = stride, kernel // 2, spatial_dims
        self.weight = nn.Parameter(torch.empty(out_max, in_max, *(kernel,) * spatial_dims))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        w = self.weight[:out_channels, :x.shape[1]]
        return _conv_fn(self.spatial_dims)(x, w, None, self.stride, self.padding)


class DynamicBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the first C channels (C = the input's), for any number of spatial dims.
    Running statistics of the active slice are updated in place (the slices are views)."""

    def _check_input_dim(self, x):
        if x.dim() < 3:
            raise ValueError(f"expected an (N, C, *spatial) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum if self.momentum is not None else 0.1, self.eps)


class DynamicLinear(nn.Module):
    def __init__(self, in_max: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_max, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.linear.weight[:, :x.shape[1]], self.linear.bias)


class DynamicBottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand, BN after each, projection shortcut on a stage's first block."""

    def __init__(self, in_max: int, mid_max: int, out_max: int, stride: int, shortcut: bool, spatial_dims: int):
        super().__init__()
        self.conv1, self.bn1 = DynamicConv(in_max, mid_max, 1, 1, spatial_dims), DynamicBatchNorm(mid_max)
        self.conv2, self.bn2 = DynamicConv(mid_max, mid_max, 3, stride, spatial_dims), DynamicBatchNorm(mid_max)
        self.conv3, self.bn3 = DynamicConv(mid_max, out_max, 1, 1, spatial_dims), DynamicBatchNorm(out_max)
        self.shortcut = shortcut
        if shortcut:
            self.down, self.down_bn = DynamicConv(in_max, out_max, 1, stride, spatial_dims), DynamicBatchNorm(out_max)

    def forward(self, x: torch.Tensor, mid: int, out: int) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x, mid)))
        h = F.relu(self.bn2(self.conv2(h, mid)))
        h = self.bn3(self.conv3(h, out))
        skip = self.down_bn(self.down(x, out)) if self.shortcut else x
        return F.relu(h + skip)

    @torch.no_grad()
    def reorganize(self) -> None:
        """Sort the middle channels by importance (OFA): conv3's input L1 norms order conv2's
        outputs (and bn2), conv2's input L1 norms order conv1's outputs (and bn1). A pure
        permutation: the block's function is unchanged."""
        for consumer, bn, producer in ((self.conv3, self.bn2, self.conv2), (self.conv2, self.bn1, self.conv1)):
            w = consumer.weight
            importance = w.abs().sum(dim=[d for d in range(w.dim()) if d != 1])
            idx = torch.argsort(importance, descending=True)
            w.data.copy_(w.data[:, idx])
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t.data.copy_(t.data[idx])
            producer.weight.data.copy_(producer.weight.data[idx])


class OFAResNet(nn.Module):
    """The supernet. ``set_active(config)`` (or ``forward(x, config)``) selects the subnet;
    the default active config is the largest network."""

    def __init__(self, spatial_dims: int, in_channels: int, n_outputs: int, size: int = 28,
                 stem_stride: int | None = None, stem_pool: bool | None = None, space: OFASpace | None = None):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims, self.in_channels, self.n_outputs, self.size = spatial_dims, in_channels, n_outputs, size
        d_stride, d_pool = default_stem(spatial_dims, size)
        self.stem_stride = d_stride if stem_stride is None else int(stem_stride)
        self.stem_pool = d_pool if stem_pool is None else bool(stem_pool)
        self.space = space or OFASpace()
        self.stem = DynamicConv(in_channels, STEM_CHANNELS, 3, self.stem_stride, spatial_dims)
        self.stem_bn = DynamicBatchNorm(STEM_CHANNELS)
        self.stages = nn.ModuleList()
        in_max = STEM_CHANNELS
        for s in range(self.space.n_stages):
            out_max = stage_width(s, max(self.space.width_choices))
            mid_max = middle_width(out_max, max(self.space.expand_choices))
            blocks = nn.ModuleList([DynamicBottleneck(in_max if i == 0 else out_max, mid_max, out_max,
                                                      STAGE_STRIDES[s] if i == 0 else 1, i == 0, spatial_dims)
                                    for i in range(self.space.max_blocks(s))])
            self.stages.append(blocks)
            in_max = out_max
        self.max_features = in_max
        self.classifier = DynamicLinear(in_max, n_outputs)
        self.active = self.space.largest()

    def build_kwargs(self) -> dict:
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels, "n_outputs": self.n_outputs,
                "size": self.size, "stem_stride": self.stem_stride, "stem_pool": self.stem_pool}

    def set_active(self, config: SubnetConfig) -> None:
        self.active = self.space.check(config)

    def _stem(self, x):
        x = F.relu(self.stem_bn(self.stem(x, STEM_CHANNELS)))
        return _pool(x, self.spatial_dims) if self.stem_pool else x

    def features(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        """Penultimate activations (global average pool of the last stage) of the active subnet."""
        c = config or self.active
        x = self._stem(x)
        for s, blocks in enumerate(self.stages):
            out = stage_width(s, c.widths[s])
            for i in range(c.depths[s]):
                x = blocks[i](x, middle_width(out, c.expands[s][i]), out)
        return x.mean(dim=tuple(range(2, x.dim())))

    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        return self.classifier(self.features(x, config))

    def reorganize(self) -> None:
        """Importance re-ordering of every block's middle channels (before the elastic phase)."""
        for blocks in self.stages:
            for block in blocks:
                block.reorganize()

    @torch.no_grad()
    def extract(self, config: SubnetConfig | None = None) -> "ResNetSubnet":
        """A standalone network of plain layers holding this config's slice of the weights
        (and BN statistics); equal to ``self(x, config)`` in eval mode."""
        c = self.space.check(config or self.active)
        net = ResNetSubnet(c, **self.build_kwargs())
        net.stem.weight.copy_(self.stem.weight)
        _copy_bn(net.stem_bn, self.stem_bn)
        for s, blocks in enumerate(net.stages):
            for i, b in enumerate(blocks):
                sb = self.stages[s][i]
                for name in ("conv1", "conv2", "conv3") + (("down",) if b.shortcut else ()):
                    w = getattr(b, name).weight
                    getattr(b, name).weight.copy_(getattr(sb, name).weight[:w.shape[0], :w.shape[1]])
                for name in ("bn1", "bn2", "bn3") + (("down_bn",) if b.shortcut else ()):
                    _copy_bn(getattr(b, name), getattr(sb, name))
        net.classifier.weight.copy_(self.classifier.linear.weight[:, :net.classifier.in_features])
        net.classifier.bias.copy_(self.classifier.linear.bias)
        return net.train(self.training)


def _pool(x, spatial_dims):
    return F.max_pool2d(x, 2) if spatial_dims == 2 else F.max_pool3d(x, 2)


def _copy_bn(dst: nn.modules.batchnorm._BatchNorm, src: nn.modules.batchnorm._BatchNorm) -> None:
    c = dst.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


class Bottleneck(nn.Module):
    """The static twin of :class:`DynamicBottleneck` with fixed channel counts."""

    def __init__(self, cin: int, mid: int, out: int, stride: int, shortcut: bool, spatial_dims: int):
        super().__init__()
        conv, bn = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.conv1, self.bn1 = conv(cin, mid, 1, bias=False), bn(mid)
        self.conv2, self.bn2 = conv(mid, mid, 3, stride, 1, bias=False), bn(mid)
        self.conv3, self.bn3 = conv(mid, out, 1, bias=False), bn(out)
        self.shortcut = shortcut
        if shortcut:
            self.down, self.down_bn = conv(cin, out, 1, stride, bias=False), bn(out)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (self.down_bn(self.down(x)) if self.shortcut else x))


class ResNetSubnet(nn.Module):
    """A subnet as an ordinary network (random init here; :meth:`OFAResNet.extract` fills it)."""

    def __init__(self, config: SubnetConfig, spatial_dims: int, in_channels: int, n_outputs: int, size: int = 28,
                 stem_stride: int | None = None, stem_pool: bool | None = None):
        super().__init__()
        d_stride, d_pool = default_stem(spatial_dims, size)
        stem_stride = d_stride if stem_stride is None else stem_stride
        self.stem_pool, self.spatial_dims, self.config = d_pool if stem_pool is None else stem_pool, spatial_dims, config
        conv, bn = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.stem, self.stem_bn = conv(in_channels, STEM_CHANNELS, 3, stem_stride, 1, bias=False), bn(STEM_CHANNELS)
        self.stages = nn.ModuleList()
        cin = STEM_CHANNELS
        for s, depth in enumerate(config.depths):
            out = stage_width(s, config.widths[s])
            self.stages.append(nn.ModuleList([
                Bottleneck(cin if i == 0 else out, middle_width(out, config.expands[s][i]), out,
                           STAGE_STRIDES[s] if i == 0 else 1, i == 0, spatial_dims) for i in range(depth)]))
            cin = out
        self.classifier = nn.Linear(cin, n_outputs)
        for m in self.modules():
            if isinstance(m, conv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        if self.stem_pool:
            x = _pool(x, self.spatial_dims)
        for blocks in self.stages:
            for b in blocks:
                x = b(x)
        return x.mean(dim=tuple(range(2, x.dim())))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_subnet(config: dict, spatial_dims: int, in_channels: int, n_outputs: int, size: int = 28,
                 stem_stride: int | None = None, stem_pool: bool | None = None, supernet: str | None = None) -> nn.Module:
    """The zoo's builder: the subnet ``config`` with weights inherited from the supernet saved
    in folder ``supernet`` (its BN statistics as the supernet stored them: recalibrate on the
    data the model is used with), or randomly initialised when ``supernet`` is None."""
    cfg = SubnetConfig.from_dict(config)
    if supernet is None:
        return ResNetSubnet(OFASpace().check(cfg), spatial_dims, in_channels, n_outputs, size, stem_stride, stem_pool)
    return load_supernet(supernet).extract(cfg)


def save_supernet(net: OFAResNet, directory, meta: dict | None = None) -> None:
    directory = Path(directory)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / SUPERNET_FILE)
    (directory / SUPERNET_META).write_text(json.dumps({"build": net.build_kwargs(), **(meta or {})}, indent=1,
                                                      default=float))


def load_supernet(directory) -> OFAResNet:
    directory = Path(directory)
    if not (directory / SUPERNET_FILE).is_file() or not (directory / SUPERNET_META).is_file():
        raise ConfigError(f"{directory} holds no trained supernet ({SUPERNET_FILE} + {SUPERNET_META})")
    meta = json.loads((directory / SUPERNET_META).read_text())
    net = OFAResNet(**meta["build"])
    net.load_state_dict(torch.load(directory / SUPERNET_FILE, map_location="cpu", weights_only=True))
    return net.eval()


def space_size(space: OFASpace) -> int:
    """Distinct subnets (inactive blocks' ratios do not count)."""
    per_stage = []
    for s in range(space.n_stages):
        per_stage.append(sum(len(space.expand_choices) ** (space.base_depths[s] + d) for d in space.depth_choices))
    n = len(space.width_choices) ** space.n_stages
    for v in per_stage:
        n *= v
    return n


__all__ = ["OFAResNet", "OFASpace", "SubnetConfig", "ResNetSubnet", "build_subnet", "load_supernet", "save_supernet",
           "make_divisible", "default_stem", "space_size"]
