"""MedMNIST loading (2D and 3D, every size), seeded stratified subsets, synthetic data.

The real loading path is always the ``medmnist`` classes with ``root=``; this module adds
the MD5 check against ``medmnist.INFO`` (medmnist only checks on download), shape checks,
and one-line errors. Arrays stay uint8 (N, C, *spatial) so a dataset is small enough to
``ray.put`` once and share with every trial.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcore.errors import DataError
from medcore.records import DatasetInfo

SPLITS = ("train", "val", "test")
SAMPLE_ROOT = Path(__file__).parent / "sample_data"
SAMPLE_FLAG = "adrenalmnist3d"
SYNTHETIC_SUFFIX = ".synthetic.json"


def _info():
    import medmnist  # lazy: keeps `medtune --help` fast

    return medmnist.INFO


@dataclass
class MedMNISTData:
    """Images as uint8 (N, C, *spatial) and labels as int64 (N, L) per split."""

    info: DatasetInfo
    images: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    def subset(self, split: str, fraction: float, seed: int) -> "MedMNISTData":
        """A copy whose ``split`` keeps a seeded stratified ``fraction`` (paper 3.2: 1/4).

        At ``fraction`` 1 the split's arrays are shared, not copied (callers need no guard)."""
        idx = stratified_indices(self.labels[split], fraction, seed)
        images, labels = dict(self.images), dict(self.labels)
        if len(idx) < len(self.labels[split]):
            images[split], labels[split] = self.images[split][idx], self.labels[split][idx]
        return MedMNISTData(self.info, images, labels)

    def low_fidelity(self, fraction: float, seed: int, val_fraction: float | None = None) -> "MedMNISTData":
        """Train reduced to ``fraction`` and val to ``val_fraction`` (default: the same, as in
        the paper's search phase, 3.2); test is never reduced."""
        val_fraction = fraction if val_fraction is None else val_fraction
        return self.subset("train", fraction, seed).subset("val", val_fraction, seed + 1)

    def sizes(self) -> dict:
        return {s: int(len(self.labels[s])) for s in SPLITS if s in self.labels}


def known_flags() -> list[str]:
    return sorted(_info())


def file_name(flag: str, size: int) -> str:
    return f"{flag}{'' if size == 28 else f'_{size}'}.npz"


def expected_md5(flag: str, size: int) -> str:
    return _info()[flag]["MD5" if size == 28 else f"MD5_{size}"]


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_root() -> str:
    """``MEDTUNE_DATA`` if set, else medmnist's own default (``~/.medmnist``)."""
    env = os.environ.get("MEDTUNE_DATA")
    if env:
        return env
    from medmnist.info import DEFAULT_ROOT

    return DEFAULT_ROOT


def _medmnist_class(flag: str):
    import medmnist

    return getattr(medmnist, _info()[flag]["python_class"])


def validate_flag_size(flag: str, size: int) -> tuple[str, int]:
    info = _info()
    key = flag.lower()
    if key not in info:
        raise DataError(f"unknown MedMNIST flag '{flag}'; known flags: {', '.join(sorted(info))}")
    sizes = _medmnist_class(key).available_sizes
    if size not in sizes:
        raise DataError(f"size {size} is not available for {key}; choose one of {sizes}")
    return key, size


def _synthetic_marker(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npz")] + SYNTHETIC_SUFFIX)


def _is_synthetic(path: Path, digest: str) -> bool:
    marker = _synthetic_marker(path)
    if not marker.exists():
        return False
    return json.loads(marker.read_text()).get("md5") == digest


def _fetch(flag: str, size: int, root: Path, path: Path) -> None:
    """Download through medmnist; offline this ends in one line naming file, MD5 and folder."""
    try:
        _medmnist_class(flag)(split="train", root=str(root), size=size, download=True)
    except Exception:  # medmnist wraps every download failure in a bare RuntimeError
        pass
    if not path.exists():
        raise DataError(
            f"dataset file {path.name} not found in {root} and could not be downloaded "
            f"(expected MD5 {expected_md5(flag, size)}); put the official file there or set "
            f"--data-root / MEDTUNE_DATA"
        )


def _to_nchw(images: np.ndarray, spatial_dims: int, size: int, path: Path, split: str) -> np.ndarray:
    """(N, *spatial[, 3]) -> (N, C, *spatial), refusing anything that is not MedMNIST-shaped."""
    if images.dtype != np.uint8:
        raise DataError(f"{path.name}: {split}_images has dtype {images.dtype}, expected uint8")
    if spatial_dims == 3 and images.ndim == 4:
        out = images[:, None]
    elif spatial_dims == 2 and images.ndim == 3:
        out = images[:, None]
    elif spatial_dims == 2 and images.ndim == 4 and images.shape[-1] == 3:
        out = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    else:
        raise DataError(f"{path.name}: {split}_images has shape {images.shape}, not a {spatial_dims}D MedMNIST array")
    if any(s != size for s in out.shape[2:]):
        raise DataError(f"{path.name}: {split}_images has spatial shape {out.shape[2:]}, expected {size}")
    return out


def load_medmnist(flag: str, size: int = 28, root: str | os.PathLike | None = None,
                  download: bool = True) -> MedMNISTData:
    """Load all three splits of a MedMNIST dataset through its ``medmnist`` class.

    The file must match the official MD5 from ``medmnist.INFO``, unless it carries a marker
    written by :func:`make_synthetic` (then the data is flagged ``synthetic`` everywhere).
    """
    flag, size = validate_flag_size(flag, size)
    root = Path(root if root is not None else default_root()).expanduser()
    path = root / file_name(flag, size)
    if not path.exists():
        if not download:
            raise DataError(f"dataset file {path.name} not found in {root} (expected MD5 {expected_md5(flag, size)})")
        root.mkdir(parents=True, exist_ok=True)
        _fetch(flag, size, root, path)
    digest = md5sum(path)
    synthetic = _is_synthetic(path, digest)
    if not synthetic and digest != expected_md5(flag, size):
        raise DataError(f"{path} is corrupt or not the official file: MD5 {digest}, expected {expected_md5(flag, size)}")
    info = _info()[flag]
    spatial_dims = 3 if flag.endswith("3d") else 2
    data = MedMNISTData(DatasetInfo(
        flag=flag, task=info["task"], n_channels=int(info["n_channels"]), n_classes=len(info["label"]),
        spatial_dims=spatial_dims, size=size, synthetic=synthetic, path=str(path)))
    cls = _medmnist_class(flag)
    for split in SPLITS:
        try:
            ds = cls(split=split, root=str(root), size=size, download=False)
            images, labels = np.asarray(ds.imgs), np.asarray(ds.labels)
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as exc:
            raise DataError(f"{path} cannot be read as a MedMNIST npz ({type(exc).__name__}: {exc})") from None
        images = _to_nchw(images, spatial_dims, size, path, split)
        if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{path.name}: {split}_labels has shape {labels.shape}, expected ({images.shape[0]}, L)")
        if images.shape[1] != data.info.n_channels:
            raise DataError(f"{path.name}: {split}_images has {images.shape[1]} channels, expected {data.info.n_channels}")
        check_labels(labels, data.info, f"{path.name}: {split}_labels")
        data.images[split], data.labels[split] = images, labels.astype(np.int64)
    return data


def check_labels(labels: np.ndarray, info: DatasetInfo, what: str) -> None:
    """Refuse labels that do not fit the task: one column per label for multi-label tasks
    (0/1 each), else one column of class indices 0..n_classes-1."""
    columns = info.n_classes if info.multi_label else 1
    if labels.shape[1] != columns:
        raise DataError(f"{what} has {labels.shape[1]} columns; a {info.task} task with {info.n_classes} "
                        f"{'labels' if info.multi_label else 'classes'} needs {columns}")
    high = 1 if info.multi_label else info.n_classes - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise DataError(f"{what} holds values {int(labels.min())}..{int(labels.max())}; the {info.task} task "
                        f"of {info.flag} allows 0..{high}")


def load_sample() -> MedMNISTData:
    """The embedded default: the official AdrenalMNIST3D 28^3 file shipped with medtune."""
    return load_medmnist(SAMPLE_FLAG, 28, SAMPLE_ROOT, download=False)


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified ``fraction`` of ``labels`` (N, L)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    n = len(labels)
    if fraction == 1.0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    # Multi-label sets are stratified on their first label; every class keeps >= 1 sample.
    key = labels[:, 0] if labels.ndim == 2 else labels
    chosen = []
    for cls in np.unique(key):
        members = np.flatnonzero(key == cls)
        k = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def make_synthetic(flag: str, root: str | os.PathLike, size: int = 28,
                   n_samples: tuple[int, int, int] = (96, 32, 32), seed: int = 0) -> Path:
    """Write a SYNTHETIC MedMNIST-format npz for ``flag`` (for flags not available offline).

    Each class is a blob of class-specific position, size and brightness over noise, so even a
    translation-invariant network (conv + global pooling) can learn it. A marker file beside it records its MD5; every output made from it is
    labelled synthetic.
    """
    flag, size = validate_flag_size(flag, size)
    info = _info()[flag]
    spatial_dims = 3 if flag.endswith("3d") else 2
    n_classes, n_channels, task = len(info["label"]), int(info["n_channels"]), info["task"]
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * spatial_dims, indexing="ij"))
    centres = rng.uniform(-0.5, 0.5, size=(n_classes, spatial_dims))
    arrays = {}
    for split, n in zip(SPLITS, n_samples):
        if task == "multi-label, binary-class":
            labels = rng.integers(0, 2, size=(n, n_classes))
        else:
            labels = (np.arange(n) % n_classes)[rng.permutation(n)][:, None]
        active = labels.astype(bool) if labels.shape[1] > 1 else np.eye(n_classes, dtype=bool)[labels[:, 0]]
        img = rng.normal(0.2, 0.08, size=(n,) + (size,) * spatial_dims)
        for c in range(n_classes):
            d2 = ((grid - centres[c].reshape((-1,) + (1,) * spatial_dims)) ** 2).sum(0)
            step = c / max(n_classes - 1, 1)
            width, amplitude = 0.02 + 0.3 * step, 0.3 + 0.6 * step
            img += active[:, c].reshape((-1,) + (1,) * spatial_dims) * amplitude * np.exp(-d2 / width)
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        if n_channels == 3:
            img = np.repeat(img[..., None], 3, axis=-1)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = img, labels.astype(np.uint8)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / file_name(flag, size)
    np.savez_compressed(path, **arrays)
    _synthetic_marker(path).write_text(json.dumps({"synthetic": True, "flag": flag, "size": size,
                                                    "seed": seed, "md5": md5sum(path)}))
    return path
