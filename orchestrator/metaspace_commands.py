"""``medtune metaspace encode|train|query``: the MedNNS meta-space on the command line.

``encode`` writes dataset encodings + the FID matrix (paper A.2, A.3), ``train`` fits a
meta-space on a zoo folder (optionally leaving one dataset out, section 3), ``query`` prints
the top-k models for a dataset (eq. 5). Every output names the feature extractor and says
SYNTHETIC where synthetic data was involved. Errors are one line (:class:`MedtuneError`).
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np


def _images_from_npz(path: str) -> np.ndarray:
    """uint8 (N, C, *spatial) from a MedMNIST-format npz (``train_images``) or one with ``images``."""
    from medcore.errors import DataError

    try:
        with np.load(path) as npz:
            key = next((k for k in ("train_images", "images") if k in npz.files), None)
            if key is None:
                raise DataError(f"{path} has no `train_images` or `images` array (arrays: {', '.join(npz.files)})")
            images = npz[key]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as an npz ({type(exc).__name__}: {exc})") from None
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key} has dtype {images.dtype}, expected uint8")
    if images.ndim == 3:  # (N, H, W)
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] == images.shape[2]:  # (N, H, W, C)
        return np.ascontiguousarray(np.moveaxis(images, -1, 1))
    if images.ndim == 4:  # (N, D, H, W)
        return images[:, None]
    if images.ndim == 5 and images.shape[-1] in (1, 3):  # (N, D, H, W, C)
        return np.ascontiguousarray(np.moveaxis(images, -1, 1))
    raise DataError(f"{path}: {key} has shape {images.shape}, not MedMNIST-shaped 2D or 3D images")


def _number(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(value) else f"{value:.4f}"


def query(args: argparse.Namespace) -> int:
    """Print the top-k models of a meta-space for a dataset (eq. 5)."""
    from orchestrator.metaspace import MetaSpace

    ms = MetaSpace.load(args.metaspace)
    synthetic_query = False
    if args.npz:
        images, name = _images_from_npz(args.npz), args.npz
    else:
        from orchestrator.data import load_medmnist

        data = load_medmnist(args.dataset, args.size, args.data_root)
        images, name, synthetic_query = data.images["train"], data.info.flag, data.info.synthetic
    exclude = args.exclude_dataset
    table = ms.query_images(images, args.top_k, exclude_dataset=exclude)
    synthetic = bool(ms.synthetic or synthetic_query)
    metric = ms.options.metric
    if args.json:
        records = json.loads(table.to_json(orient="records"))
        for rec in records:  # the zoo's JSON columns as objects
            for key in ("architecture", "build"):
                if isinstance(rec.get(key), str):
                    rec[key] = json.loads(rec[key])
        print(json.dumps({"metaspace": str(args.metaspace), "query": name, "extractor": ms.extractor,
                          "spatial_dims": ms.spatial_dims, "trained_on": ms.datasets, "excluded": ms.excluded,
                          "synthetic": synthetic, "top_k": records}, indent=2))
        return 0
    print(f"meta-space {args.metaspace}: {ms.spatial_dims}D, {len(ms.models)} models from "
          f"{', '.join(ms.datasets)}; extractor {ms.extractor}" + ("; SYNTHETIC" if synthetic else ""))
    print(f"top {len(table)} for {name}" + (f" (excluding {exclude}'s models)" if exclude else "") + ":")
    shown = table[["model_id", "dataset", "family", "score"]].copy()
    shown.insert(0, "rank", range(1, len(shown) + 1))
    shown["score"] = shown["score"].map(_number)
    if metric in table:
        shown[metric] = table[metric].map(_number)
    shown["weights"] = table["weights"].map(lambda w: w if isinstance(w, str) and w else "-")
    print(shown.to_string(index=False))
    return 0


def encode(args: argparse.Namespace) -> int:
    """Encode datasets (train split) and write encodings + the FID matrix to --out."""
    from orchestrator.data import load_medmnist
    from orchestrator.metaspace import encode_datasets

    flags = [f for f in args.datasets.split(",") if f]
    datasets = {}
    for flag in flags:
        data = load_medmnist(flag, args.size, args.data_root)
        datasets[data.info.flag] = data
    enc = encode_datasets(datasets, seed=args.seed, n_images=args.n_images)
    enc.save(args.out)
    mark = "  SYNTHETIC: " + ", ".join(n for n, s in enc.synthetic.items() if s) if any(enc.synthetic.values()) else ""
    print(f"wrote encodings of {', '.join(enc.names)} ({enc.extractor}, {enc.n_images} images, seed {enc.seed}) "
          f"to {args.out}{mark}")
    print("FID:")
    print(enc.fid.round(3).to_string())
    return 0


def train(args: argparse.Namespace) -> int:
    """Train a meta-space on a zoo folder and save it to --out."""
    from orchestrator.metaspace import DatasetEncodings, MetaSpaceOptions, train_metaspace
    from orchestrator.zoo import read_zoo

    options = MetaSpaceOptions(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, metric=args.metric,
                               use_perf=not args.no_perf, use_rank=not args.no_rank, use_fid=not args.no_fid,
                               use_contrastive=args.contrastive, beta=args.beta, sigma=args.sigma)
    encodings = DatasetEncodings.load(args.encodings)
    zoo = read_zoo(args.zoo, dataset=encodings.names if args.only_encoded else None)
    ms = train_metaspace(zoo, encodings, options, exclude=args.exclude)
    ms.save(args.out)
    last = ms.history[-1] if ms.history else {}
    losses = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("epoch", "seconds", "cpu_seconds"))
    print(f"wrote meta-space ({len(ms.models)} models from {', '.join(ms.datasets)}"
          + (f", {args.exclude} left out" if args.exclude else "") + f"; {ms.extractor}) to {args.out}"
          + (f"; last epoch: {losses}" if losses else "") + ("; SYNTHETIC" if ms.synthetic else ""))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    meta = sub.add_parser("metaspace", help="MedNNS meta-space: encode datasets, train on a zoo, query"
                          ).add_subparsers(dest="metaspace_command", required=True)

    p = meta.add_parser("query", help="top-k models (architecture + weights) for a dataset")
    p.add_argument("--metaspace", required=True, help="a folder written by `medtune metaspace train` (or a search)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a MedMNIST flag (its train split is encoded)")
    src.add_argument("--npz", help="an npz with `train_images` (MedMNIST format) or `images`, uint8")
    p.add_argument("--data-root", help="folder of the MedMNIST npz files (default: MEDTUNE_DATA or ~/.medmnist)")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--exclude-dataset", help="leave this dataset's models out of the ranking")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(handler=query)

    p = meta.add_parser("encode", help="dataset embeddings and the FID matrix")
    p.add_argument("--datasets", required=True, help="comma-separated MedMNIST flags, all 2D or all 3D")
    p.add_argument("--data-root")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=encode)

    p = meta.add_parser("train", help="train a meta-space on a zoo folder")
    p.add_argument("--zoo", required=True)
    p.add_argument("--encodings", required=True, help="a folder written by `medtune metaspace encode`")
    p.add_argument("--out", required=True)
    p.add_argument("--exclude", help="leave-one-dataset-out target: its models and dataset stay out of training")
    p.add_argument("--only-encoded", action="store_true", help="use only the zoo's datasets that have encodings")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--sigma", type=float, default=None, help="FID loss scale (default: median FID)")
    p.add_argument("--metric", default="val_acc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-perf", action="store_true")
    p.add_argument("--no-rank", action="store_true")
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--contrastive", action="store_true", help="add the TANS-style contrastive loss (Table 2)")
    p.set_defaults(handler=train)
