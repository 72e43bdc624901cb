"""U-Nets whose skip connections take replaceable modules (IAC paper, III-A, Fig. 1; Stage I).

Three backbones, 2D or 3D (``spatial_dims``), all MONAI networks:

* ``unet`` -- MONAI ``BasicUNet`` (the paper's base U-Net: two-conv blocks, 4 poolings);
* ``resnet`` -- MONAI ``FlexibleUNet`` with a ResNet encoder (default ``resnet10``);
* ``efficientnet`` -- MONAI ``FlexibleUNet`` with an EfficientNet encoder (default ``efficientnet-b0``).

:class:`SkipUNet` runs the wrapped network's own blocks but owns the decoder loop: at every
skip level the decoder upsamples (MONAI ``UpCat.upsample``), and where a skip module is set,
``module(x_enc, x_dec_up, encoder_features=[...])`` replaces the encoder tensor in the
concatenation (paper Fig. 1: the cell sits between encoder and decoder and sees both). With no
modules the arithmetic is exactly ``UpCat.forward``'s, so outputs equal the plain network.
:meth:`SkipUNet.freeze` fixes the U-Net (weights and normalisation statistics) for Stages II
and III, where only the skip modules train.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medcore.errors import ConfigError


def _upcat(block, x: torch.Tensor, x_e: torch.Tensor | None, module: nn.Module | None, features: list):
    """MONAI ``UpCat.forward`` with ``module`` applied to the encoder features before concatenation."""
    x_0 = block.upsample(x)
    if x_e is None:
        return block.convs(x_0)
    if block.is_pad:  # as UpCat: pad the upsampled features where 2x pooling met odd lengths
        dims = len(x.shape) - 2
        sp = [0] * (dims * 2)
        for i in range(dims):
            if x_e.shape[-i - 1] != x_0.shape[-i - 1]:
                sp[i * 2 + 1] = 1
        x_0 = torch.nn.functional.pad(x_0, sp, "replicate")
    if module is not None:
        x_e = module(x_e, x_0, encoder_features=features)
    return block.convs(torch.cat([x_e, x_0], dim=1))


def _up_channels(block, cat_chns: int) -> int:
    """Channels of ``block.upsample``'s output: the first conv's input less the encoder's share."""
    return int(block.convs.conv_0.conv.in_channels) - int(cat_chns)


class SkipUNet(nn.Module):
    """A MONAI U-Net (``net``) with optional modules in its skip connections.

    ``encoder_features`` handed to a skip module are the skip-level encoder tensors, shallowest
    first, aligned with :meth:`skip_channels` (index ``level`` is the module's own ``x_enc``).
    """

    def __init__(self, net: nn.Module, backbone: str, spatial_dims: int, build: dict):
        super().__init__()
        self.net = net
        self.backbone, self.spatial_dims, self.build = backbone, spatial_dims, dict(build)
        self.skips: nn.ModuleList | None = None
        self.frozen = False

    # -- structure -----------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> tuple[list, torch.Tensor]:
        """(skip-level encoder features shallowest first, the deepest feature)."""
        n = self.net
        if hasattr(n, "conv_0"):  # BasicUNet
            feats = [n.conv_0(x)]
            for down in (n.down_1, n.down_2, n.down_3, n.down_4):
                feats.append(down(feats[-1]))
        else:  # FlexibleUNet: every encoder output but the deepest is a skip
            feats = list(n.encoder(x))
        return feats[:-1], feats[-1]

    def _decoder_blocks(self) -> list:
        """UpCat blocks deepest first; the first ``len(skips)`` take skips (deepest skip first)."""
        n = self.net
        if hasattr(n, "conv_0"):
            return [n.upcat_4, n.upcat_3, n.upcat_2, n.upcat_1]
        return list(n.decoder.blocks)

    def _encoder_channels(self) -> list[int]:
        n = self.net
        if hasattr(n, "conv_0"):
            return [int(n.conv_0.conv_1.conv.out_channels)] + \
                [int(d.convs.conv_1.conv.out_channels) for d in (n.down_1, n.down_2, n.down_3)]
        from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

        return list(FLEXUNET_BACKBONE.register_dict[self.build["encoder"]]["feature_channel"])[:-1]

    def skip_channels(self) -> list[tuple[int, int]]:
        """Per skip level, shallowest first: (encoder skip channels, upsampled decoder channels)."""
        enc = self._encoder_channels()
        blocks = self._decoder_blocks()[:len(enc)][::-1]
        return [(c, _up_channels(b, c)) for c, b in zip(enc, blocks)]

    def set_skips(self, modules: list[nn.Module] | None) -> None:
        """Put ``modules`` (one per skip level, shallowest first) into the skips; None: plain skips."""
        if modules is None:
            self.skips = None
            return
        levels = len(self.skip_channels())
        if len(modules) != levels:
            raise ConfigError(f"{self.backbone} U-Net has {levels} skip levels, got {len(modules)} skip modules",
                              field="skips")
        self.skips = nn.ModuleList(modules)

    def make_skips(self, factory: Callable[..., nn.Module], **kwargs) -> list[nn.Module]:
        """``factory(level, channels, spatial_dims, **kwargs)`` for every level (``channels`` is
        the whole :meth:`skip_channels` list, so a module may use deeper levels too)."""
        channels = self.skip_channels()
        return [factory(level, channels, self.spatial_dims, **kwargs) for level in range(len(channels))]

    # -- freezing ------------------------------------------------------------------------
    def freeze(self) -> "SkipUNet":
        """U-Net weights fixed (requires_grad False), BatchNorm/Dropout kept in eval mode even
        under ``.train()``; skip modules stay trainable."""
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.frozen = True
        self.net.eval()
        return self

    def train(self, mode: bool = True) -> "SkipUNet":
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def unet_state_dict(self) -> dict:
        """The U-Net's own weights (no skip modules): what Stage I saves and later stages load."""
        return self.net.state_dict()

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, x = self._encode(x)
        n = self.net
        for i, block in enumerate(self._decoder_blocks()):
            level = len(skips) - 1 - i
            x_e = skips[level] if level >= 0 else None
            module = self.skips[level] if (self.skips is not None and level >= 0) else None
            x = _upcat(block, x, x_e, module, skips)
        if hasattr(n, "conv_0"):
            return n.final_conv(x)
        return n.segmentation_head(x)


def _basic_unet(spatial_dims: int, in_channels: int, out_channels: int, features=(32, 32, 64, 128, 256, 32),
                **kw):
    from monai.networks.nets import BasicUNet

    net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                    features=tuple(features), **kw)
    return net, {"features": list(features), **kw}


def _flexible(default_encoder: str, family: str):
    def build(spatial_dims: int, in_channels: int, out_channels: int, encoder: str = default_encoder,
              decoder_channels=(128, 64, 32, 16, 16), **kw):
        from monai.networks.nets import FlexibleUNet
        from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

        known = sorted(k for k in FLEXUNET_BACKBONE.register_dict if k.startswith(family))
        if encoder not in known:
            raise ConfigError(f"unknown {family} encoder '{encoder}'; known: {', '.join(known)}", field="encoder")
        net = FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone=encoder, pretrained=False,
                           spatial_dims=spatial_dims, decoder_channels=tuple(decoder_channels), **kw)
        return net, {"encoder": encoder, "decoder_channels": list(decoder_channels), **kw}
    return build


# name -> constructor (spatial_dims, in_channels, out_channels, **kw) -> (MONAI net, build kwargs)
BACKBONES: dict[str, Callable] = {
    "unet": _basic_unet,
    "resnet": _flexible("resnet10", "resnet"),
    "efficientnet": _flexible("efficientnet-b0", "efficientnet"),
}


def build_unet(backbone: str, spatial_dims: int, in_channels: int, out_channels: int, **kw) -> SkipUNet:
    """A fresh (randomly initialised, never pretrained: no downloads) U-Net of ``backbone``."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone '{backbone}'; known backbones: {', '.join(BACKBONES)}",
                          field="backbone")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}", field="spatial_dims")
    net, extra = BACKBONES[backbone](spatial_dims, in_channels, out_channels, **kw)
    build = {"backbone": backbone, "spatial_dims": spatial_dims, "in_channels": in_channels,
             "out_channels": out_channels, **extra}
    return SkipUNet(net, backbone, spatial_dims, build)


def rebuild_unet(build: dict) -> SkipUNet:
    """The U-Net a ``SkipUNet.build`` dict describes (checkpoints store it)."""
    b = dict(build)
    return build_unet(b.pop("backbone"), b.pop("spatial_dims"), b.pop("in_channels"), b.pop("out_channels"), **b)
