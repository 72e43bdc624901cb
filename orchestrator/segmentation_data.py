"""Segmentation data for the U-Net skip-cell search (IAC paper, section IV-A and Fig. 5).

Three sources give the same :class:`SegmentationData`:

* a Medical Segmentation Decathlon folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``),
  read with MONAI's ``load_decathlon_datalist`` and ``LoadImage`` (NIfTI through nibabel), so
  any Decathlon task works;
* the numpy copy of MSD Task04 Hippocampus (``hippocampus_volumes.npz``: ``case_ids``,
  ``image_<id>``, ``label_<id>``), the same volumes without nibabel;
* ``"synthetic"``: MONAI's ``create_test_image_2d/3d`` (circles / spheres), labelled synthetic.

The paper's recipe: each volume is min-max normalised on its own (per channel), the mask is
binary (``label > 0``); 2D takes the slices along the last (axial) axis, 3D the whole volume,
both centre padded / cropped (MONAI ``ResizeWithPadOrCrop``) to ``size`` per spatial axis.
Cases, never slices, are split: ``train_dt`` 80 % / ``val_dt`` 20 %, and ``train_search`` /
``val_search`` the two halves of ``train_dt`` (Fig. 5). Decathlon test labels are not public,
so ``val_dt`` is also the held-out split that reports call "test".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medcore.errors import DataError
from medcore.records import DatasetInfo

SPLITS = ("train_dt", "val_dt", "train_search", "val_search")
SYNTHETIC = "synthetic"
TASK = "segmentation"
VAL_FRACTION = 0.2  # Fig. 5: train_dt 80 % / val_dt 20 %
SYNTHETIC_CASES = 20  # synthetic cases when max_cases is not given
SYNTHETIC_SLICES = 8  # 2D synthetic images per synthetic case


@dataclass
class SegmentationData:
    """Images float32 (N, C, *spatial) normalised per volume, labels uint8 (N, 1, *spatial) in {0, 1}.

    ``images`` / ``labels`` hold the four Fig. 5 splits plus ``train`` / ``val``: the names
    :func:`trainables.fit.fit` reads, aliases (no copies) of ``train_dt`` / ``val_dt`` by
    default; :meth:`fit_view` points them at other splits (Stage II: the search halves).
    ``cases[split]`` lists the split's case ids, ``sample_cases[split]`` the case of each row.
    """

    info: DatasetInfo
    images: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    cases: dict = field(default_factory=dict)
    sample_cases: dict = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.info.synthetic

    def fit_view(self, train: str = "train_dt", val: str = "val_dt") -> "SegmentationData":
        """The same arrays with fit's ``train`` / ``val`` keys aliasing ``train`` / ``val`` splits."""
        for name in (train, val):
            if name not in SPLITS:
                raise DataError(f"unknown split '{name}'; splits: {', '.join(SPLITS)}")
        images = {s: self.images[s] for s in SPLITS}
        labels = {s: self.labels[s] for s in SPLITS}
        images.update(train=images[train], val=images[val])
        labels.update(train=labels[train], val=labels[val])
        return replace(self, images=images, labels=labels)

    def sizes(self) -> dict:
        return {s: int(len(self.labels[s])) for s in SPLITS}

    def describe(self) -> dict:
        """JSON-able summary (for summary.json): dataset, synthetic flag, cases and samples per split."""
        return {"dataset": self.info.flag, "synthetic": self.synthetic, "path": self.info.path,
                "spatial_dims": self.info.spatial_dims, "size": self.info.size,
                "cases": {s: len(self.cases[s]) for s in SPLITS}, "samples": self.sizes()}


def split_cases(case_ids, seed: int = 0) -> dict:
    """Fig. 5 by case: a seeded permutation of the sorted ids; 20 % val_dt, the rest train_dt,
    whose first half (rounded up) is train_search and second half val_search."""
    ids = sorted(str(c) for c in case_ids)
    if len(ids) < 3:
        raise DataError(f"{len(ids)} case(s) cannot be split into train_dt / val_dt / train_search / val_search; "
                        "need at least 3")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val = min(len(ids) - 2, max(1, int(round(VAL_FRACTION * len(ids)))))
    val, train = order[:n_val], order[n_val:]
    half = (len(train) + 1) // 2
    search = sorted(train[:half]), sorted(train[half:])
    # train_dt lists train_search then val_search, so both halves are views of its arrays
    return {"train_dt": search[0] + search[1], "val_dt": sorted(val), "train_search": search[0],
            "val_search": search[1]}


def _case_id(path: str) -> str:
    """``.../hippocampus_001.nii.gz`` -> ``001`` (the npz's ids); other names keep their stem."""
    stem = Path(path).name.split(".")[0]
    m = re.search(r"_(\d+)$", stem)
    return m.group(1) if m else stem


def _normalise(volume: np.ndarray) -> np.ndarray:
    """Min-max per volume and channel to [0, 1] (MONAI ``ScaleIntensity`` semantics), float32."""
    v = volume.astype(np.float32)
    axes = tuple(range(1, v.ndim))
    lo, hi = v.min(axis=axes, keepdims=True), v.max(axis=axes, keepdims=True)
    return ((v - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def _prepare(case: str, image: np.ndarray, label: np.ndarray, size: int, spatial_dims: int):
    """One case, channel first (C, H, W, D) / (1, H, W, D) -> samples (n, C, *size) and (n, 1, *size)."""
    from monai.transforms import ResizeWithPadOrCrop

    if image.shape[1:] != label.shape[1:]:
        raise DataError(f"case {case}: image shape {tuple(image.shape[1:])} and label shape "
                        f"{tuple(label.shape[1:])} differ")
    if image.ndim != 4:
        raise DataError(f"case {case}: expected a 3D volume (with channels), got shape {tuple(image.shape)}")
    image, mask = _normalise(image), (label[:1] > 0).astype(np.uint8)
    if spatial_dims == 3:
        pad = ResizeWithPadOrCrop((size,) * 3)
        return (np.asarray(pad(image))[None].astype(np.float32),
                np.asarray(pad(mask))[None].astype(np.uint8))
    pad = ResizeWithPadOrCrop((size, size, -1))  # in-plane only (-1 keeps the axial count)
    xs, ys = np.asarray(pad(image)), np.asarray(pad(mask))
    return (np.ascontiguousarray(np.moveaxis(xs, -1, 0), dtype=np.float32),
            np.ascontiguousarray(np.moveaxis(ys, -1, 0), dtype=np.uint8))


def _decathlon_cases(root: Path, max_cases: int | None):
    """(case id, image path, label path) from ``dataset.json``'s training list (MONAI's reader)."""
    index = root / "dataset.json"
    if not index.is_file():
        raise DataError(f"{root} has no dataset.json; expected a Medical Segmentation Decathlon folder "
                        "(dataset.json, imagesTr/, labelsTr/), an .npz copy, or 'synthetic'")
    from monai.data import load_decathlon_datalist

    try:
        items = load_decathlon_datalist(str(index), is_segmentation=True, data_list_key="training",
                                        base_dir=str(root))
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{index}: not a Decathlon index ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    cases = sorted((_case_id(it["image"]), it["image"], it["label"]) for it in items if "label" in it)
    return cases[:max_cases] if max_cases else cases


def _load_decathlon(root: Path, max_cases: int | None):
    from monai.transforms import LoadImage

    reader = LoadImage(image_only=True, ensure_channel_first=True, reader="NibabelReader")
    volumes = {}
    for case, image_path, label_path in _decathlon_cases(root, max_cases):
        arrays = []
        for path in (image_path, label_path):
            if not Path(path).is_file():
                raise DataError(f"case {case}: file {path} listed in dataset.json does not exist")
            try:
                arrays.append(np.asarray(reader(path)))
            except Exception as exc:  # nibabel / MONAI raise many types for a corrupt file
                raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        volumes[case] = tuple(arrays)
    return volumes


def _load_npz(path: Path, max_cases: int | None):
    try:
        d = np.load(path)
        ids = [str(c) for c in d["case_ids"]]
    except Exception as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    volumes = {}
    for case in sorted(ids)[:max_cases] if max_cases else sorted(ids):
        try:
            image, label = d[f"image_{case}"], d[f"label_{case}"]
        except KeyError as exc:
            raise DataError(f"{path}: case {case} has no {exc.args[0]} array") from None
        image = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)  # (H, W, D[, C]) -> channel first
        volumes[case] = (image, label[None])
    return volumes


def _synthetic(size: int, spatial_dims: int, max_cases: int | None, seed: int):
    from monai.data import create_test_image_2d, create_test_image_3d

    rng = np.random.RandomState(seed)
    volumes = {}
    for i in range(max_cases or SYNTHETIC_CASES):
        if spatial_dims == 3:
            img, seg = create_test_image_3d(size, size, size, num_objs=4, rad_max=max(2, size // 6),
                                            rad_min=max(1, size // 12), noise_max=0.3, random_state=rng)
        else:
            pairs = [create_test_image_2d(size, size, num_objs=4, rad_max=max(2, size // 6),
                                          rad_min=max(1, size // 12), noise_max=0.3, random_state=rng)
                     for _ in range(SYNTHETIC_SLICES)]
            img, seg = np.stack([p[0] for p in pairs], -1), np.stack([p[1] for p in pairs], -1)
        volumes[f"{i:03d}"] = (img[None].astype(np.float32), seg[None].astype(np.uint8))
    return volumes


def load_segmentation(path_or_synthetic: str, size: int, spatial_dims: int = 2, max_cases: int | None = None,
                      seed: int = 0) -> SegmentationData:
    """Load a Decathlon folder, an npz copy or ``"synthetic"`` into the Fig. 5 splits (by case).

    ``size``: pixels per spatial axis after centre pad/crop (paper 128; smaller on CPU);
    ``max_cases``: the first cases by sorted id (a CPU budget); ``seed`` fixes the split (and
    the synthetic images). Errors are one-line :class:`DataError` s.
    """
    if spatial_dims not in (2, 3):
        raise DataError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if size < 8:
        raise DataError(f"size must be at least 8 pixels, got {size}")
    if max_cases is not None and max_cases < 3:
        raise DataError(f"max_cases must be at least 3 (one case per split), got {max_cases}")
    synthetic = str(path_or_synthetic) == SYNTHETIC
    if synthetic:
        volumes, name, where = _synthetic(size, spatial_dims, max_cases, seed), SYNTHETIC, SYNTHETIC
    else:
        p = Path(path_or_synthetic).expanduser()
        if p.is_dir():
            volumes = _load_decathlon(p, max_cases)
            name = str(json.loads((p / "dataset.json").read_text()).get("name") or p.name)
        elif p.suffix == ".npz" and p.is_file():
            volumes, name = _load_npz(p, max_cases), p.stem.removesuffix("_volumes")
        else:
            raise DataError(f"segmentation data {p} not found; give a Decathlon folder (with dataset.json), "
                            "an .npz copy, or 'synthetic'")
        where = str(p)
    if not volumes:
        raise DataError(f"{where}: no labelled cases")
    prepared = {case: _prepare(case, img, lab, size, spatial_dims) for case, (img, lab) in volumes.items()}
    if not any(y.any() for _, y in prepared.values()):
        raise DataError(f"{where}: empty mask set (every label is background, nothing to segment)")
    channels = {x.shape[1] for x, _ in prepared.values()}
    if len(channels) != 1:
        raise DataError(f"{where}: cases have different channel counts {sorted(channels)}")
    split = split_cases(prepared, seed)
    data = SegmentationData(info=DatasetInfo(flag=name.lower(), task=TASK, n_channels=channels.pop(), n_classes=1,
                                             spatial_dims=spatial_dims, size=size, synthetic=synthetic,
                                             path=where))
    for s in ("train_dt", "val_dt"):
        ids = split[s]
        data.cases[s] = list(ids)
        data.images[s] = np.concatenate([prepared[c][0] for c in ids])
        data.labels[s] = np.concatenate([prepared[c][1] for c in ids])
        data.sample_cases[s] = np.concatenate([np.full(len(prepared[c][1]), c) for c in ids])
    n = sum(len(prepared[c][1]) for c in split["train_search"])
    for s, rows in (("train_search", slice(0, n)), ("val_search", slice(n, None))):
        data.cases[s] = list(split[s])
        for store in (data.images, data.labels, data.sample_cases):
            store[s] = store["train_dt"][rows]
    return data.fit_view()
