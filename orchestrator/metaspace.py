"""The MedNNS meta-space driver: dataset encodings + FID, training on the zoo, the query.

Paper 2 A.2-A.3 and B: datasets are encoded by a fixed feature extractor
(:mod:`trainables.dataset_encoding`; the extractor's name travels with every output);
E_m, E_d and phi (:mod:`trainables.metaspace_model`) are trained on every ok zoo row with
a performance, whatever search wrote it (architecture encodings of different families and
lengths are zero-padded to one length, with a family one-hot; a missing functional
encoding is zeros plus a missing indicator). Leave-one-dataset-out (section 3): with
``exclude``, the target's models and its dataset embedding and FID row are never seen in
training. The query (eq. 5) ranks every model embedding by cosine similarity to
E_d(D_new).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from medcore.errors import ConfigError, DataError, ResourceError
from medcore.records import OK
from orchestrator.atomic import read_json, write_json
from trainables.metaspace_model import MetaSpaceOptions  # noqa: F401  (part of this module's API)

ENCODINGS_JSON = "encodings.json"
METASPACE_JSON = "metaspace.json"
QUERY_COLUMNS = ("model_id", "dataset", "family", "architecture", "build", "weights", "score")


def _dims_word(d: int) -> str:
    return f"{int(d)}D"


@dataclass
class DatasetEncodings:
    """Each dataset's embedding (mean extractor feature) and the FID between every pair.

    ``fid`` is a DataFrame indexed and columned by dataset name; ``extractor`` names the
    feature extractor (Inception or the fallback) and is written wherever the encodings go.
    """

    embeddings: dict
    fid: pd.DataFrame
    extractor: str
    spatial_dims: int
    n_images: int = 0
    seed: int = 0
    synthetic: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.embeddings)

    def save(self, folder) -> Path:
        """``encodings.npz`` (one array per dataset), ``fid.csv`` and ``encodings.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".encodings.npz.tmp.npz"
        np.savez(tmp, **{name: np.asarray(v, np.float64) for name, v in self.embeddings.items()})
        tmp.replace(folder / "encodings.npz")
        self.fid.to_csv(folder / "fid.csv")
        write_json(folder / ENCODINGS_JSON, {
            "datasets": self.names, "extractor": self.extractor, "spatial_dims": int(self.spatial_dims),
            "n_images": int(self.n_images), "seed": int(self.seed),
            "synthetic": {k: bool(v) for k, v in self.synthetic.items()},
            "any_synthetic": any(self.synthetic.values())})
        return folder

    @classmethod
    def load(cls, folder) -> "DatasetEncodings":
        folder = Path(folder)
        meta = read_json(folder / ENCODINGS_JSON)
        if not meta:
            raise DataError(f"no dataset encodings in {folder} (missing {ENCODINGS_JSON})")
        with np.load(folder / "encodings.npz") as npz:
            embeddings = {name: npz[name] for name in meta["datasets"]}
        fid = pd.read_csv(folder / "fid.csv", index_col=0)
        return cls(embeddings=embeddings, fid=fid, extractor=meta["extractor"], spatial_dims=meta["spatial_dims"],
                   n_images=meta.get("n_images", 0), seed=meta.get("seed", 0), synthetic=meta.get("synthetic", {}))

    def subset(self, names) -> "DatasetEncodings":
        names = list(names)
        return DatasetEncodings({n: self.embeddings[n] for n in names}, self.fid.loc[names, names].copy(),
                                self.extractor, self.spatial_dims, self.n_images, self.seed,
                                {n: self.synthetic.get(n, False) for n in names})


def encode_images(images: np.ndarray, spatial_dims: int, n_images: int, seed: int, extractor=None):
    """(mean feature, covariance, extractor name) of a seeded random set of ``images`` (uint8 (N, C, *spatial))."""
    from trainables.dataset_encoding import dataset_features, feature_extractor, gaussian_stats

    if images.ndim != spatial_dims + 2:
        raise ConfigError(f"images of shape {tuple(images.shape)} are not {_dims_word(spatial_dims)} (N, C, *spatial)")
    fn, name = extractor if extractor is not None else feature_extractor(spatial_dims)
    feats = dataset_features(images, n_images, seed, fn)
    mu, cov = gaussian_stats(feats)
    return mu, cov, name


def encode_datasets(datasets: dict, seed: int, n_images: int) -> DatasetEncodings:
    """Embed every dataset (its train split) and compute the FID between every pair (paper A.2, A.3)."""
    from trainables.dataset_encoding import feature_extractor, frechet_distance

    if not datasets:
        raise ConfigError("no datasets to encode")
    if n_images < 2:
        raise ConfigError(f"n_images must be >= 2 (FID needs a covariance), got {n_images}", "n_images")
    dims = {name: int(d.info.spatial_dims) for name, d in datasets.items()}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{n} ({_dims_word(d)})" for n, d in dims.items())
        raise ConfigError(f"2D and 3D datasets mixed in one meta-space: {listing}; encode them separately")
    spatial_dims = next(iter(dims.values()))
    extractor = feature_extractor(spatial_dims)
    stats = {name: encode_images(d.images["train"], spatial_dims, n_images, seed, extractor)[:2]
             for name, d in datasets.items()}
    names = list(datasets)
    fid = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            fid[i, j] = fid[j, i] = max(0.0, frechet_distance(stats[a][0], stats[a][1], stats[b][0], stats[b][1]))
    return DatasetEncodings(
        embeddings={n: stats[n][0] for n in names}, fid=pd.DataFrame(fid, index=names, columns=names),
        extractor=extractor[1], spatial_dims=spatial_dims, n_images=int(n_images), seed=int(seed),
        synthetic={n: bool(d.info.synthetic) for n, d in datasets.items()})


def load_or_encode(folder, datasets: dict, seed: int, n_images: int) -> DatasetEncodings:
    """The encodings cached in ``folder`` if they cover ``datasets`` with the same extractor, seed
    and image count; else encode them and cache them there (the run's storage)."""
    from trainables.dataset_encoding import feature_extractor

    folder = Path(folder)
    if (folder / ENCODINGS_JSON).exists():
        cached = DatasetEncodings.load(folder)
        dims = {int(d.info.spatial_dims) for d in datasets.values()}
        if (set(datasets) <= set(cached.names) and dims == {cached.spatial_dims} and cached.seed == seed
                and cached.n_images == n_images and cached.extractor == feature_extractor(cached.spatial_dims)[1]):
            return cached.subset(list(datasets))
    enc = encode_datasets(datasets, seed, n_images)
    enc.save(folder)
    return enc


# ---- model features --------------------------------------------------------------------------

@dataclass
class FeatureLayout:
    """How a zoo row becomes E_m's input: [architecture encoding, zero-padded] [family one-hot]
    [functional encoding, zero-padded] [functional missing]."""

    families: list
    encoding_len: int
    functional_len: int

    @property
    def dim(self) -> int:
        return self.encoding_len + len(self.families) + self.functional_len + 1


def _is_vector(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _lengths(col: pd.Series) -> np.ndarray:
    return np.fromiter((len(v) if _is_vector(v) else 0 for v in col), dtype=np.int64, count=len(col))


def _fill_ragged(out: np.ndarray, col: pd.Series, lengths: np.ndarray, what: str) -> None:
    """Rows of a list column into ``out`` (N, width), zero-padded, one np.stack per length."""
    from trainables.metaspace_model import FEATURE_CHUNK

    width = out.shape[1]
    if len(col) and lengths.max(initial=0) > width:
        raise DataError(f"a zoo row's {what} has {int(lengths.max())} values; this meta-space takes at most {width}")
    values = col.to_numpy()
    for length in np.unique(lengths):
        if length == 0:
            continue
        rows = np.flatnonzero(lengths == length)
        for start in range(0, len(rows), FEATURE_CHUNK):  # bounded temporaries on a 720k-row zoo
            chunk = rows[start:start + FEATURE_CHUNK]
            out[chunk, :length] = np.stack([np.asarray(v, np.float32) for v in values[chunk]])


def layout_of(zoo: pd.DataFrame) -> FeatureLayout:
    families = sorted(str(f) for f in zoo["family"].fillna("").unique()) if "family" in zoo else [""]
    enc = int(_lengths(zoo["encoding"]).max(initial=0)) if "encoding" in zoo else 0
    fun = int(_lengths(zoo["functional"]).max(initial=0)) if "functional" in zoo else 0
    return FeatureLayout(families=families, encoding_len=enc, functional_len=fun)


def model_features(zoo: pd.DataFrame, layout: FeatureLayout) -> np.ndarray:
    """E_m's input for every row of ``zoo`` (N, layout.dim), float32, filled in place."""
    n = len(zoo)
    out = np.zeros((n, layout.dim), np.float32)
    enc_end = layout.encoding_len
    fam_end = enc_end + len(layout.families)
    fun_end = fam_end + layout.functional_len
    if "encoding" in zoo:
        _fill_ragged(out[:, :enc_end], zoo["encoding"], _lengths(zoo["encoding"]), "architecture encoding")
    family = zoo["family"].fillna("").astype(str) if "family" in zoo else pd.Series([""] * n)
    codes = pd.Categorical(family, categories=layout.families).codes
    known = np.flatnonzero(codes >= 0)
    out[known, enc_end + codes[known]] = 1.0
    if "functional" in zoo:
        lengths = _lengths(zoo["functional"])
        _fill_ragged(out[:, fam_end:fun_end], zoo["functional"], lengths, "functional encoding")
        out[:, fun_end] = lengths == 0
    else:
        out[:, fun_end] = 1.0
    return out


# ---- the meta-space ----------------------------------------------------------------------------

class MetaSpace:
    """A trained meta-space: the networks, every training model's embedding and its zoo metadata.

    :meth:`query` ranks the models for a dataset embedding (eq. 5); :meth:`save` / :meth:`load`
    keep it in a folder (``metaspace.json``, ``net.pt``, ``model_embeddings.npy``, ``models.parquet``).
    """

    def __init__(self, net, model_embeddings: np.ndarray, models: pd.DataFrame, layout: FeatureLayout,
                 spatial_dims: int, extractor: str, options: MetaSpaceOptions, datasets: list, excluded=None,
                 synthetic: bool = False, history=None, sigma=None, n_images: int = 0, seed: int = 0):
        self.net, self.model_embeddings, self.models = net, np.ascontiguousarray(model_embeddings, np.float32), models
        self.layout, self.spatial_dims, self.extractor = layout, int(spatial_dims), extractor
        self.options, self.datasets, self.excluded = options, list(datasets), excluded
        self.synthetic, self.history, self.sigma = bool(synthetic), list(history or []), sigma
        self.n_images, self.seed = int(n_images), int(seed)
        self._codes = pd.Categorical(models["dataset"], categories=self.datasets).codes
        import pyarrow as pa
        import torch

        self._embeddings_t = torch.from_numpy(self.model_embeddings)
        front = [c for c in QUERY_COLUMNS if c != "score"]
        self._table = pa.Table.from_pandas(models[front + [c for c in models.columns if c not in QUERY_COLUMNS]],
                                           preserve_index=False)

    @property
    def embedding_dim(self) -> int:
        """The dataset-embedding length the query takes (the extractor's feature size)."""
        return int(self.net.dataset_mean.shape[0])

    def dataset_embedding(self, embedding: np.ndarray) -> np.ndarray:
        """E_d(D) on the unit sphere for a raw dataset embedding (mean extractor feature)."""
        import torch

        embedding = np.asarray(embedding, np.float32).reshape(-1)
        if embedding.shape[0] != self.embedding_dim:
            raise DataError(f"dataset embedding has {embedding.shape[0]} values; this meta-space takes "
                            f"{self.embedding_dim} ({self.extractor} features)")
        if not np.isfinite(embedding).all():
            raise DataError("dataset embedding holds NaN or infinite values")
        with torch.no_grad():
            return self.net.embed_datasets(torch.from_numpy(embedding)[None])[0].numpy()

    def query(self, embedding: np.ndarray, top_k: int, exclude_dataset: str | None = None,
              spatial_dims: int | None = None) -> pd.DataFrame:
        """The ``top_k`` models by cosine similarity of E_d(D_new) to their embeddings (eq. 5),
        best first; ``exclude_dataset``'s models are left out. ``spatial_dims`` (if given) must
        match the meta-space's."""
        if spatial_dims is not None and int(spatial_dims) != self.spatial_dims:
            raise ConfigError(f"a {_dims_word(spatial_dims)} query against a {_dims_word(self.spatial_dims)} "
                              f"meta-space; use a meta-space trained on {_dims_word(spatial_dims)} datasets")
        if int(top_k) < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}", "top_k")
        import torch

        q = torch.from_numpy(self.dataset_embedding(embedding))
        scores = torch.mv(self._embeddings_t, q)  # unit vectors: the dot product is the cosine
        available = len(scores)
        if exclude_dataset is not None and exclude_dataset in self.datasets:
            mask = torch.from_numpy(self._codes == self.datasets.index(exclude_dataset))
            scores.masked_fill_(mask, -math.inf)
            available -= int(mask.sum())
        k = min(int(top_k), available)
        if k == 0:
            raise DataError(f"no model left to recommend once {exclude_dataset}'s models are excluded")
        values, top = torch.topk(scores, k)
        values, top = values.numpy().astype(np.float64), top.numpy()
        order = np.lexsort((top, -values))  # ties: lower row first, so equal scores rank deterministically
        out = self._table.take(top[order]).to_pandas()
        out.insert(len(QUERY_COLUMNS) - 1, "score", values[order])
        return out

    def query_images(self, images: np.ndarray, top_k: int, exclude_dataset: str | None = None) -> pd.DataFrame:
        """Encode ``images`` (uint8 (N, C, *spatial)) with this meta-space's extractor, then :meth:`query`."""
        from trainables.dataset_encoding import feature_extractor

        dims = images.ndim - 2
        if dims != self.spatial_dims:
            raise ConfigError(f"a {_dims_word(dims)} query against a {_dims_word(self.spatial_dims)} meta-space; "
                              f"use a meta-space trained on {_dims_word(dims)} datasets")
        extractor = feature_extractor(dims)
        if extractor[1] != self.extractor:
            raise ConfigError(f"this meta-space was trained on {self.extractor} features, but {extractor[1]} is "
                              f"the extractor available here; encodings from different extractors do not compare")
        mu, _, _ = encode_images(images, dims, self.n_images or 256, self.seed, extractor)
        return self.query(mu, top_k, exclude_dataset, spatial_dims=dims)

    def score_models(self, zoo_rows: pd.DataFrame, embedding: np.ndarray) -> np.ndarray:
        """Cosine similarity of E_d(embedding) to E_m of arbitrary zoo rows (e.g. a held-out dataset's models)."""
        import torch

        from trainables.metaspace_model import embed_in_batches

        q = self.dataset_embedding(embedding)
        x = model_features(zoo_rows, self.layout)
        with torch.no_grad():
            return embed_in_batches(self.net.embed_models, x) @ q

    def save(self, folder) -> Path:
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), folder / "net.pt")
        np.save(folder / "model_embeddings.npy", self.model_embeddings)
        self.models.to_parquet(folder / "models.parquet", index=False)
        write_json(folder / METASPACE_JSON, {
            "spatial_dims": self.spatial_dims, "extractor": self.extractor, "datasets": self.datasets,
            "excluded": self.excluded, "synthetic": self.synthetic, "options": asdict(self.options),
            "layout": asdict(self.layout), "model_dim": int(self.net.model_mean.shape[0]),
            "dataset_dim": self.embedding_dim, "n_models": len(self.models), "sigma": self.sigma,
            "n_images": self.n_images, "seed": self.seed, "history": self.history})
        return folder

    @classmethod
    def load(cls, folder) -> "MetaSpace":
        import torch

        from trainables.metaspace_model import MetaSpaceNet

        folder = Path(folder)
        meta = read_json(folder / METASPACE_JSON)
        if not meta:
            raise DataError(f"no meta-space in {folder} (missing {METASPACE_JSON})")
        known = {f.name for f in fields(MetaSpaceOptions)}
        options = MetaSpaceOptions(**{k: v for k, v in meta["options"].items() if k in known})
        net = MetaSpaceNet(meta["model_dim"], meta["dataset_dim"], options.hidden_dim, options.embedding_dim)
        net.load_state_dict(torch.load(folder / "net.pt", weights_only=True))
        net.eval()
        return cls(net, np.load(folder / "model_embeddings.npy"), pd.read_parquet(folder / "models.parquet"),
                   FeatureLayout(**meta["layout"]), meta["spatial_dims"], meta["extractor"], options,
                   meta["datasets"], meta.get("excluded"), meta.get("synthetic", False), meta.get("history"),
                   meta.get("sigma"), meta.get("n_images", 0), meta.get("seed", 0))


def _training_rows(zoo: pd.DataFrame, metric: str) -> pd.DataFrame:
    if zoo is None or len(zoo) == 0:
        raise DataError("the zoo is empty: run a search that writes models (e.g. `medtune search ...`) first")
    for col in ("dataset", metric):
        if col not in zoo:
            raise DataError(f"the zoo has no `{col}` column")
    ok = zoo["status"].eq(OK) if "status" in zoo else pd.Series(True, index=zoo.index)
    rows = zoo[ok & np.isfinite(pd.to_numeric(zoo[metric], errors="coerce").astype(float))]
    if rows.empty:
        raise DataError(f"the zoo has no model with status ok and a {metric} ({len(zoo)} rows, none usable)")
    return rows.reset_index(drop=True)


def available_memory() -> float:
    """Bytes this machine can still give the process (psutil's ``available``): the meta-space
    trains in the calling process, not in a Ray trial with a ``memory`` request."""
    import psutil

    return float(psutil.virtual_memory().available)


TRAIN_SETTINGS = "--batch-size, or train on fewer pairs (a smaller --zoo, --only-encoded, --exclude)"
KEPT_COLUMNS = ("model_id", "dataset", "family", "architecture", "build", "weights", "search")


def _table_bytes(rows: pd.DataFrame, columns) -> int:
    """What the trained :class:`MetaSpace` copies of ``columns``: the pandas copy's values (8
    bytes a row) and the query's Arrow table (a string column's characters, measured on up to
    1,000 evenly spaced rows, and its offsets; other columns their item size)."""
    n = len(rows)
    sample = rows.iloc[::max(1, n // 1000)]
    per_row = 0.0
    for c in columns:
        col = sample[c]
        if isinstance(col.dtype, np.dtype) and col.dtype != object:
            per_row += 8 + col.dtype.itemsize
        else:  # object or pandas' string dtype
            lengths = [len(v.encode()) for v in col if isinstance(v, str)]
            per_row += 16 + (sum(lengths) / len(col) if len(col) else 0.0)
    return int(per_row * n)


def check_memory(rows: pd.DataFrame, layout: FeatureLayout, n_datasets: int, dataset_dim: int,
                 options: MetaSpaceOptions, limit: float | None = None, settings: str = TRAIN_SETTINGS) -> int:
    """The bytes training on ``rows`` will add (:func:`~trainables.metaspace_model.metaspace_memory`),
    refused in one line (:class:`ResourceError`) when they exceed ``limit`` (default: this
    machine's :func:`available_memory`, read now, with the zoo already loaded), naming
    ``settings``. The batch is never lowered on its own: it sets the optimiser steps per epoch
    and the rank partners each step draws (a different meta-space), and the pair features, not
    the batch, are most of the memory."""
    from trainables.metaspace_model import metaspace_memory

    keep = [c for c in KEPT_COLUMNS + (options.metric, "synthetic") if c in rows]
    need = metaspace_memory(len(rows), layout.dim, dataset_dim, n_datasets, options, _table_bytes(rows, keep),
                            max(layout.encoding_len, layout.functional_len))
    limit = available_memory() if limit is None else float(limit)
    if need > limit:
        raise ResourceError(f"training the meta-space needs {need / 2**30:.1f} GB ({len(rows):,} pairs x "
                            f"{layout.dim} features, batch {options.batch_size}), but this machine has "
                            f"{limit / 2**30:.1f} GB available; lower {settings}")
    return need


def train_metaspace(zoo: pd.DataFrame, encodings: DatasetEncodings, options: MetaSpaceOptions | None = None,
                    exclude: str | None = None, memory_limit: float | None = None,
                    settings: str = TRAIN_SETTINGS) -> MetaSpace:
    """Train a meta-space on every ok zoo row with ``options.metric``; ``exclude`` is the
    leave-one-out target whose models, embedding and FID row stay out of training. Before
    anything is built, :func:`check_memory` refuses a training that would not fit
    ``memory_limit`` (default: the machine's available memory), naming ``settings``."""
    from trainables.metaspace_model import embed_in_batches, fit_metaspace

    options = options or MetaSpaceOptions()
    options.check()
    rows = _training_rows(zoo, options.metric)
    if "spatial_dims" in rows and rows["spatial_dims"].notna().any():
        dims = sorted({int(d) for d in rows["spatial_dims"].dropna()})
        if len(dims) > 1:
            per = rows.groupby("dataset")["spatial_dims"].first()
            listing = ", ".join(f"{n} ({_dims_word(d)})" for n, d in per.items())
            raise ConfigError(f"2D and 3D datasets mixed in one meta-space: {listing}; train one per dimensionality")
        if dims[0] != int(encodings.spatial_dims):
            raise ConfigError(f"the zoo holds {_dims_word(dims[0])} models but the dataset encodings are "
                              f"{_dims_word(encodings.spatial_dims)}")
    names = sorted(rows["dataset"].astype(str).unique())
    if exclude is not None:
        if exclude not in names:
            raise DataError(f"leave-one-out target {exclude!r} is not a dataset of the zoo "
                            f"(datasets with ok models: {', '.join(names)})")
        if len(names) < 2:
            raise ConfigError(f"leave-one-out needs at least two datasets in the zoo, got one ({names[0]})")
        rows = rows[rows["dataset"] != exclude].reset_index(drop=True)
        names = [n for n in names if n != exclude]
    missing = [n for n in names if n not in encodings.embeddings]
    if missing:
        raise DataError(f"dataset(s) {', '.join(missing)} in the zoo have no dataset encoding "
                        f"(encodings hold: {', '.join(encodings.names) or 'none'}); encode them first")
    layout = layout_of(rows)
    dataset_x = np.stack([np.asarray(encodings.embeddings[n], np.float32) for n in names])
    check_memory(rows, layout, len(names), dataset_x.shape[1], options, memory_limit, settings)
    model_x = model_features(rows, layout)
    codes = pd.Categorical(rows["dataset"].astype(str), categories=names).codes.astype(np.int64)
    fid = encodings.fid.loc[names, names].to_numpy(np.float64) if options.use_fid else None
    perf = rows[options.metric].to_numpy(np.float64)
    fit = fit_metaspace(model_x, dataset_x, codes, perf, fid, options)
    embeddings = embed_in_batches(fit.net.embed_models, model_x)
    keep = [c for c in KEPT_COLUMNS + (options.metric, "synthetic") if c in rows]
    models = rows[keep].copy()
    for col in ("family", "architecture", "build", "weights"):
        if col not in models:
            models[col] = None
    synthetic = bool(rows["synthetic"].fillna(False).any()) if "synthetic" in rows else False
    synthetic = synthetic or any(encodings.synthetic.get(n, False) for n in names)
    return MetaSpace(fit.net, embeddings, models.reset_index(drop=True), layout, encodings.spatial_dims,
                     encodings.extractor, options, names, exclude, synthetic, fit.history, fit.sigma,
                     encodings.n_images, encodings.seed)
