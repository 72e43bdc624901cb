"""The model zoo: every model any search evaluates, in one Parquet dataset with one schema.

Layout: ``<zoo>/dataset=<flag>/<writer_id>.parquet`` (hive partitioning, so a read for one
dataset opens only that folder). Each writer (``<run>-<search>-<stage>``) owns its files:
writing the same ``writer_id`` again replaces them, so a resumed search adds no duplicate
rows, and two writers never touch the same file. Files are written to a temporary name that
starts with "." in the same folder, fsynced and renamed, so a crash never leaves a partial
file where readers look (pyarrow's discovery skips names starting with "." or "_").
Rows are de-duplicated by ``model_id`` on read, newest ``created`` first.

``baseline`` marks hand-made reference models (the ODE ``--baseline``, the compression base,
the default training strategy, DARTS' plain U-Nets and skip baselines), so rankings can tell a
searched model from the reference it is compared with. Zoos written before the column existed
read it as derived from ``search`` / ``stage`` / ``architecture`` (:func:`is_baseline`).
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from medcore.errors import MedtuneError
from medcore.records import METRICS, OK, ModelRecord
from orchestrator.atomic import finite

# Metrics where a lower value is better; every other metric is ranked highest first.
LOWER_IS_BETTER = frozenset({"val_loss", "latency_ms", "params", "flops", "size_mb"})

PARTITION = pa.schema([pa.field("dataset", pa.string())])

SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("spatial_dims", pa.int64()),
        pa.field("search", pa.string()),
        pa.field("run", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("family", pa.string()),
        pa.field("architecture", pa.string()),  # the search's own JSON
        pa.field("encoding", pa.list_(pa.float64())),  # fixed length per family
        pa.field("functional", pa.list_(pa.float64())),  # MedNNS A.2 functional encoding; null if none
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        *[pa.field(m, pa.float64()) for m in METRICS],
        pa.field("metrics_extra", pa.string()),  # JSON: metrics outside the vocabulary
        pa.field("weights", pa.string()),  # a weights reference (checkpoint folder / URI); null if none
        pa.field("build", pa.string()),  # JSON {"builder": name (trainables.builders), "kwargs": {...}}
        pa.field("input_shape", pa.list_(pa.int64())),  # C, *spatial
        pa.field("task", pa.string()),
        pa.field("medtune_version", pa.string()),
        pa.field("synthetic", pa.bool_()),
        pa.field("created", pa.timestamp("us", tz="UTC")),
        pa.field("baseline", pa.bool_()),  # a hand-made reference model; null in older zoos (derived on read)
    ],
    metadata={"medtune.zoo.schema": "1"},
)
COLUMNS = tuple(SCHEMA.names)
# What each file holds: the partition key lives in the folder name only.
FILE_SCHEMA = SCHEMA.remove(SCHEMA.get_field_index("dataset"))

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

# (search, stage) of rows that are hand-made reference models, not searched ones ("*": any search).
BASELINE_STAGES = frozenset({("*", "baseline"), ("compress", "base"), ("strategy", "retrain-default"),
                             ("darts", "stage1")})
# The metrics_extra key a search sets to say why a row keeps no weights.
WEIGHTS_REASON = "weights_reason"


def is_baseline(search, stage, architecture=None) -> bool:
    """True for a reference model: a stage in :data:`BASELINE_STAGES`, or a DARTS Stage III
    skip baseline (a row without a searched ``genotype``)."""
    if ("*", stage) in BASELINE_STAGES or (search, stage) in BASELINE_STAGES:
        return True
    if search == "darts" and stage == "stage3":
        if isinstance(architecture, str):
            try:
                architecture = json.loads(architecture)
            except ValueError:
                return False
        return isinstance(architecture, dict) and not architecture.get("genotype")
    return False


def has_weights(value) -> bool:
    """True when a ``weights`` value references stored weights (pandas reads a null string as NaN)."""
    return isinstance(value, str) and bool(value.strip())


def weights_reason(row) -> str:
    """Why a row has no weights: the reason its search recorded, else a plain "no stored weights"."""
    if has_weights(row.get("weights")):
        return ""
    extra = row.get("metrics_extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = None
    reason = extra.get(WEIGHTS_REASON) if isinstance(extra, dict) else None
    return str(reason) if reason else "no stored weights"


def medtune_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("medtune")
    except PackageNotFoundError:
        return "unknown"


def _metric(value) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def rows_from_records(records: list[ModelRecord], *, dataset: str, size: int, spatial_dims: int, task: str,
                      input_shape, run: str, synthetic: bool) -> list[dict]:
    """Zoo rows for one search's records on one dataset.

    Metrics in :data:`medcore.records.METRICS` become float columns (NaN where not measured);
    the rest go to ``metrics_extra`` as JSON.
    """
    created = datetime.now(timezone.utc)
    version = medtune_version()
    rows = []
    for r in records:
        metrics = dict(r.metrics or {})
        extra = {k: v for k, v in metrics.items() if k not in METRICS}
        rows.append({
            "model_id": r.model_id(dataset, size, run), "dataset": dataset, "size": int(size),
            "spatial_dims": int(spatial_dims), "search": r.search, "run": run, "stage": r.stage,
            "family": r.family, "architecture": json.dumps(finite(r.architecture), sort_keys=True, default=str),
            "encoding": [float(v) for v in r.encoding], "status": r.status, "reason": r.reason or "",
            "functional": None if r.functional is None else [float(v) for v in r.functional],
            **{m: _metric(metrics.get(m)) for m in METRICS},
            "metrics_extra": json.dumps(finite(extra), sort_keys=True, default=str),
            "weights": r.weights or None,
            "build": json.dumps(finite(r.build), sort_keys=True, default=str) if r.build else None,
            "input_shape": [int(v) for v in input_shape], "task": task, "medtune_version": version,
            "synthetic": bool(synthetic), "created": created,
            "baseline": bool(getattr(r, "baseline", None) or is_baseline(r.search, r.stage, r.architecture)),
        })
    return rows


def _filesystem(zoo_path) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path on it, is local) for a local path or any URI pyarrow.fs understands."""
    text = os.fspath(zoo_path)
    if "://" in text and not text.startswith("file://"):
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise MedtuneError(f"zoo path {text}: {_first_line(exc)}") from None
        return fs, path, isinstance(fs, pafs.LocalFileSystem)
    if text.startswith("file://"):
        text = pafs.FileSystem.from_uri(text)[1]
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()), True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_folder(fs: pafs.FileSystem, path: str, shown) -> bool:
    """True if the zoo folder exists; a file there is a one-line error."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise MedtuneError(f"zoo path {shown} is a file, not a zoo folder")
    return info.type == pafs.FileType.Directory


def _check_name(value, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise MedtuneError(f"{what} {value!r} must be letters, digits, '.', '_', '+' or '-' and not start "
                           f"with '.', '_', '+' or '-'")
    return value


def _write_local(path: Path, table: pa.Table) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_remote(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Best effort on object stores: readers skip the dot-named temporary until the move."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            pq.write_table(table, out)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


def write_rows(zoo_path, rows: list[dict], writer_id: str) -> list[Path | str]:
    """Write ``rows`` as one file per dataset named ``<writer_id>.parquet``, atomically.

    Re-writing the same ``writer_id`` replaces that writer's file in each dataset the rows
    name (files of datasets absent from ``rows`` stay). Columns a row lacks are null; a row
    without ``created`` gets the write time. Returns the files written.
    """
    _check_name(writer_id, "writer id")
    fs, root, local = _filesystem(zoo_path)
    _check_folder(fs, root, zoo_path)
    by_dataset: dict[str, list[dict]] = {}
    stamp = datetime.now(timezone.utc)
    for row in rows:
        if not row.get("model_id"):
            raise MedtuneError("zoo row without a model_id")
        if row.get("created") is None:  # de-duplication keeps the newest row of a model
            row = {**row, "created": stamp}
        by_dataset.setdefault(_check_name(row.get("dataset"), "dataset"), []).append(row)
    written = []
    for dataset, batch in sorted(by_dataset.items()):
        try:
            table = pa.Table.from_pylist(batch, schema=FILE_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise MedtuneError(f"zoo rows for {dataset} do not fit the zoo schema: {_first_line(exc)}") from None
        folder = f"{root}/dataset={dataset}"
        if local:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / f"{writer_id}.parquet"
            _write_local(path, table)
        else:
            fs.create_dir(folder, recursive=True)
            path = f"{folder}/{writer_id}.parquet"
            _write_remote(fs, path, table)
        written.append(path)
    return written


def _read_table(zoo_path, keys=None, where=None, columns=None, selective: bool = False) -> pa.Table:
    """The zoo's rows, one per model_id (the newest), matching ``keys`` and then ``where``.

    ``keys`` filters on columns a model id is hashed from (dataset, search, model_id), so every
    row of a model passes or fails together: it is pushed down to the scan (dataset prunes
    partitions). ``where`` (status, metrics) may differ between a model's rows, so it applies
    after de-duplication: a model whose newest row failed is not found through an older ok row.
    ``selective``: ``keys`` keeps a handful of rows (one model id), so first scan only the
    key columns to find the files holding them, then read those files whole.
    """
    fs, root, _ = _filesystem(zoo_path)
    if columns is not None:
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise MedtuneError(f"unknown zoo column(s) {', '.join(unknown)}; columns: {', '.join(COLUMNS)}")
    if not _check_folder(fs, root, zoo_path):
        table = SCHEMA.empty_table()
    else:
        derive = ["search", "stage", "architecture"] if columns is not None and "baseline" in columns else []
        load = COLUMNS if columns is None or where is not None else list(dict.fromkeys([*columns, "model_id",
                                                                                          "created", *derive]))
        try:
            partitioning = ds.partitioning(PARTITION, flavor="hive")
            dataset = ds.dataset(root, schema=SCHEMA, format="parquet", filesystem=fs, partitioning=partitioning)
            if selective and keys is not None:
                files = pc.unique(dataset.to_table(filter=keys, columns=["__filename"])["__filename"])
                dataset = ds.dataset(files.to_pylist(), schema=SCHEMA, format="parquet", filesystem=fs,
                                     partitioning=partitioning, partition_base_dir=root)
            table = dataset.to_table(filter=keys, columns=list(load))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
            raise MedtuneError(f"unreadable Parquet in zoo {zoo_path}: {_first_line(exc)}") from None
        table = _fill_baseline(_newest_per_model(table))
        if where is not None:
            table = table.filter(where)
    return table.select(list(columns)) if columns is not None else table


def _fill_baseline(table: pa.Table) -> pa.Table:
    """Rows of zoos older than the ``baseline`` column get it derived by :func:`is_baseline`."""
    if "baseline" not in table.column_names or table["baseline"].null_count == 0:
        return table
    marks = table["baseline"].to_pylist()
    searches, stages = table["search"].to_pylist(), table["stage"].to_pylist()
    archs = table["architecture"].to_pylist()
    filled = [m if m is not None else is_baseline(se, st, a) for m, se, st, a in zip(marks, searches, stages, archs)]
    return table.set_column(table.column_names.index("baseline"), "baseline", pa.array(filled, pa.bool_()))


def _newest_per_model(table: pa.Table) -> pa.Table:
    if table.num_rows == 0 or pc.count_distinct(table["model_id"]).as_py() == table.num_rows:
        return table
    order = pc.sort_indices(table, sort_keys=[("model_id", "ascending"), ("created", "descending")])
    table = table.take(order)
    ids = table["model_id"].combine_chunks()
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return table.filter(keep)


def _isin(**values):
    """An Arrow expression: each named column in the given value (or list of values); None if no filter."""
    expr = None
    for name, value in values.items():
        if value is None:
            continue
        term = ds.field(name).isin([value] if isinstance(value, str) else list(value))
        expr = term if expr is None else expr & term
    return expr


def read_zoo(zoo_path, dataset=None, search=None, status=None, columns=None) -> pd.DataFrame:
    """The zoo as a DataFrame, one row per model_id (the newest ``created``).

    ``dataset``, ``search`` and ``status`` take a value or a list, applied by pyarrow
    (``dataset`` prunes partitions). A missing or empty zoo gives an empty frame with the
    schema's columns.
    """
    table = _read_table(zoo_path, _isin(dataset=dataset, search=search), _isin(status=status), columns)
    return table.to_pandas()


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise MedtuneError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    return metric


def ranked(zoo_path, metric: str, dataset=None) -> pd.DataFrame:
    """Every status-ok row with a ``metric``, best first (lowest for cost-like metrics), NaN excluded."""
    _check_metric(metric)
    where = _isin(status=OK) & ds.field(metric).is_valid() & ~pc.is_nan(ds.field(metric))
    df = _read_table(zoo_path, _isin(dataset=dataset), where).to_pandas()
    ascending = metric in LOWER_IS_BETTER
    return df.sort_values([metric, "model_id"], ascending=[ascending, True], kind="stable").reset_index(drop=True)


def usable(df: pd.DataFrame, weights: bool = True, baselines: bool = False) -> tuple[pd.DataFrame, dict]:
    """The rows of ``df`` that can be used: with stored weights (unless ``weights`` is False) and
    not baselines (unless ``baselines``); and how many of each kind were left out."""
    skipped = {"without weights": 0, "baseline": 0}
    if df.empty:
        return df, skipped
    keep = pd.Series(True, index=df.index)
    no_weights = ~df["weights"].map(has_weights).astype(bool)
    is_base = df["baseline"].eq(True)
    if weights:
        skipped["without weights"] = int((no_weights & keep).sum())
        keep &= ~no_weights
    if not baselines:
        skipped["baseline"] = int((is_base & keep).sum())
        keep &= ~is_base
    return df[keep].reset_index(drop=True), skipped


def best(zoo_path, metric: str, dataset=None, n: int = 1, *, weights: bool = False,
         baselines: bool = True) -> pd.DataFrame:
    """The ``n`` status-ok rows with the best ``metric`` (lowest for cost-like metrics), NaN excluded;
    with ``weights`` only rows with stored weights, with ``baselines=False`` no baseline rows."""
    df, _ = usable(ranked(zoo_path, metric, dataset), weights=weights, baselines=baselines)
    return df.head(max(int(n), 0)).reset_index(drop=True)


def get_model(zoo_path, model_id: str) -> dict:
    """One model's row as a dict of Python values."""
    table = _read_table(zoo_path, _isin(model_id=model_id), selective=True)
    if table.num_rows == 0:
        raise MedtuneError(f"model {model_id} not found in zoo {zoo_path}")
    return table.slice(0, 1).to_pylist()[0]


def row_json(row: dict) -> dict:
    """A zoo row with its JSON columns parsed and NaN as null, for printing and model cards.

    The ``build`` recipe names its builder by its stable name (:mod:`trainables.builders`), also
    where an older zoo stored a ``module:function`` path; the files themselves are never rewritten."""
    from trainables.builders import normalise

    out = {}
    for key, value in row.items():
        if key in ("architecture", "build", "metrics_extra") and isinstance(value, str):
            value = json.loads(value)
        if key == "build" and isinstance(value, dict):
            value = normalise(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif hasattr(value, "tolist"):  # numpy arrays and scalars from pandas
            value = value.tolist()
        out[key] = value
    return finite(out)


def metrics_of(row: dict) -> dict:
    """The row's measured metrics: vocabulary columns that are not NaN, then the extras."""
    out = {m: row[m] for m in METRICS if row.get(m) is not None and not math.isnan(row[m])}
    extra = row.get("metrics_extra")
    if extra:
        out.update(json.loads(extra) if isinstance(extra, str) else extra)
    return out
