"""Dataset encoding and FID for the MedNNS meta-space (paper section 2 A.2, A.3).

A dataset is encoded by passing a seeded random set of its images through a fixed feature
extractor; the mean feature is its embedding and (mean, covariance) give the Frechet
distance (FID) between two datasets.

The extractor is pytorch-fid's InceptionV3 (pool3, 2048-d) where ``pytorch_fid`` and
torchvision import and the FID Inception weights are already in torch's hub cache (both
imported inside :func:`feature_extractor`, never at module import). Otherwise -- offline,
CPU torch with a CUDA torchvision wheel -- a *fallback* is used: a fixed random-weight CNN
(``random-conv-v1``, weights drawn from a torch.Generator seeded 0, so the same on every
machine and run). Random-weight CNN features are a documented stand-in for Inception
features in FID-style distances (Naeem et al. 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models": randomly initialised embeddings rank distributions
consistently and avoid ImageNet bias, which matters for medical images). The extractor's
name is returned with it and written in every output, so two encodings made with different
extractors are never compared.

3D volumes go through the same 2D extractor: three orthogonal planes (axial, coronal,
sagittal) at 25/50/75 % depth, nine slices per volume, features averaged (name suffix
``+orthoslices``).
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FALLBACK_NAME = "random-conv-v1"
INCEPTION_NAME = "inception-v3-fid-pool3"
SLICES_SUFFIX = "+orthoslices"
SLICE_FRACTIONS = (0.25, 0.5, 0.75)
FALLBACK_SIZE = 64  # every image is resized to this before the random CNN (28/64/128 px comparable)
FALLBACK_CHANNELS = (32, 64, 160)  # pooled per stage and concatenated: 256 features
FALLBACK_SEED = 0


class RandomConvFeatures(nn.Module):
    """The fallback extractor: three random 3x3 conv + ReLU stages, each globally average-pooled.

    Input (B, C, H, W) floats in [0, 1]; 1-channel images are repeated to 3 channels so grey
    and RGB datasets share one feature space. Weights are Kaiming-normal from a generator
    seeded ``seed`` (never the global RNG). Output (B, 256).
    """

    def __init__(self, seed: int = FALLBACK_SEED, channels=FALLBACK_CHANNELS, size: int = FALLBACK_SIZE):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.size = size
        self.convs = nn.ModuleList()
        c_in = 3
        for c_out in channels:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (c_in * 9)) ** 0.5)
            self.convs.append(conv)
            c_in = c_out
        self.requires_grad_(False)
        self.eval()

    @property
    def dim(self) -> int:
        return sum(c.out_channels for c in self.convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _three_channels(x)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x * 2 - 1
        pooled = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            pooled.append(x.mean(dim=(2, 3)))
            if i < len(self.convs) - 1:
                x = F.avg_pool2d(x, 2)
        return torch.cat(pooled, dim=1)


def _three_channels(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, 3, *x.shape[2:])
    return x.mean(dim=1, keepdim=True).expand(-1, 3, *x.shape[2:])


def orthogonal_slices(volumes: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B * 9, C, S, S): axial, coronal and sagittal slices at 25/50/75 %.

    Non-cubic volumes are resized to a cube first so the three planes stack.
    """
    b, c = volumes.shape[:2]
    side = max(volumes.shape[2:])
    if len(set(volumes.shape[2:])) > 1:
        volumes = F.interpolate(volumes, size=(side,) * 3, mode="trilinear", align_corners=False)
    idx = [min(side - 1, int(f * side)) for f in SLICE_FRACTIONS]
    planes = [volumes[:, :, idx], volumes[:, :, :, idx], volumes[:, :, :, :, idx]]  # (B, C, 3, S, S) after moves
    planes = [planes[0].permute(0, 2, 1, 3, 4), planes[1].permute(0, 3, 1, 2, 4), planes[2].permute(0, 4, 1, 2, 3)]
    return torch.cat(planes, dim=1).reshape(b * 3 * len(idx), c, side, side)


def _inception(reason: list) -> Callable | None:
    """pytorch-fid's InceptionV3 pool3 where it imports and its weights are cached, else None."""
    try:
        import torchvision  # noqa: F401  (pytorch_fid needs it; a CUDA wheel fails here on CPU torch)
        from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
    except Exception as exc:  # ImportError, or the RuntimeError a mismatched torchvision raises
        reason.append(f"pytorch_fid/torchvision unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
        return None
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(FID_WEIGHTS_URL))
    if not os.path.exists(cached):
        reason.append(f"FID Inception weights not in {cached}")
        return None
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True).eval()

    def extract(x: torch.Tensor) -> torch.Tensor:
        return model(_three_channels(x))[0].flatten(1)

    return extract


def feature_extractor(spatial_dims: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """``(extract, name)``: ``extract`` maps float images (B, C, *spatial) in [0, 1] to (B, D).

    InceptionV3 pool3 (2048-d) where available, else the seeded random CNN (256-d); 3D input
    is encoded as the average over nine orthogonal slices. ``extract.reason`` says why the
    fallback was chosen ("" for Inception).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    reason: list = []
    base, name = _inception(reason), INCEPTION_NAME
    if base is None:
        base, name = RandomConvFeatures(), FALLBACK_NAME

    @torch.no_grad()
    def extract(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if spatial_dims == 3:
            b = x.shape[0]
            return base(orthogonal_slices(x)).reshape(b, 3 * len(SLICE_FRACTIONS), -1).mean(dim=1)
        return base(x)

    extract.reason = "; ".join(reason)
    return extract, name + (SLICES_SUFFIX if spatial_dims == 3 else "")


def dataset_features(images: np.ndarray, n: int, seed: int, extractor: Callable, batch_size: int = 64) -> np.ndarray:
    """Features (min(n, N), D) of a seeded random set of ``n`` images (paper A.2).

    ``images`` is uint8 (N, C, *spatial); the sample is drawn without replacement with
    ``numpy.random.default_rng(seed)`` and kept in index order.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    out = []
    for start in range(0, len(idx), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[idx[start:start + batch_size]])).float() / 255.0
        out.append(extractor(batch).double().numpy())
    return np.concatenate(out, axis=0)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))``.

    pytorch-fid's ``calculate_frechet_distance`` where it imports; else the same computation
    (scipy.linalg.sqrtm, an ``eps`` offset on the diagonals when the product is singular,
    negligible imaginary parts dropped).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance
    except Exception:
        calculate_frechet_distance = None
    if calculate_frechet_distance is not None:
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps))
    from scipy import linalg

    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("mean vectors and covariances must have matching shapes")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below, as pytorch-fid does
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the FID square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features (N, D), as FID uses them."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))
