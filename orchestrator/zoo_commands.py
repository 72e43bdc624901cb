"""``medtune zoo list|show|best`` and ``medtune export``: the model zoo on the command line.

:func:`add_commands` registers the commands on the top-level subparsers; each sets
``handler(args) -> exit code``. Errors are :class:`MedtuneError`, which the CLI prints as one line.
``zoo best`` ranks by ``val_auc`` by default: selecting on a test metric would leak the test split.
It ranks the models one can use: rows with stored weights (``--any`` adds the rest) that are not
hand-made baselines (``--baselines`` adds them), so its first id is one ``medtune export`` takes;
what it skipped is said on stderr (stdout stays one model per line, id first). A model that
predicts one class for every case is marked ``ONE CLASS`` in every listing.
"""
from __future__ import annotations

import argparse
import json
import math

from medcore.records import METRICS, one_class

MAIN_METRICS = ("val_auc", "val_acc", "test_auc", "test_acc", "val_dice", "test_dice")
DEFAULT_METRIC = "val_auc"
COUNTS = frozenset({"params", "flops", "epochs", "val_pred_classes", "test_pred_classes"})  # printed as integers

ONE_CLASS = "ONE CLASS"  # how every table (zoo, status) marks a model that predicts one class for every case
ONE_CLASS_TEXT = "predicts one class for every case"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def skipped_line(skipped: dict) -> str:
    """``skipped 12 rows without weights and 1 baseline; --any / --baselines to include them`` ('' if none)."""
    parts, flags = [], []
    if skipped.get("without weights"):
        parts.append(_plural(skipped["without weights"], "row") + " without weights")
        flags.append("--any")
    if skipped.get("baseline"):
        parts.append(_plural(skipped["baseline"], "baseline"))
        flags.append("--baselines")
    if not parts:
        return ""
    return f"skipped {' and '.join(parts)}; {' / '.join(flags)} to include them"


def _notes(row: dict) -> list[str]:
    """The marks a zoo row carries in listings: baseline, one class."""
    notes = ["BASELINE"] if row.get("baseline") == True else []  # noqa: E712 -- numpy and Python bools
    if one_class(row):
        notes.append(ONE_CLASS)
    return notes


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def zoo_list(args: argparse.Namespace) -> int:
    """A compact table of the zoo's models, newest first."""
    from orchestrator.zoo import read_zoo

    columns = ["model_id", "dataset", "search", "stage", "status", *MAIN_METRICS, "params", "synthetic", "created",
               "weights", "baseline", "val_pred_classes", "test_pred_classes"]
    df = read_zoo(args.zoo, dataset=args.dataset, search=args.search, columns=columns)
    if df.empty:
        print(f"no models in zoo {args.zoo}" + (" matching the filters" if args.dataset or args.search else ""))
        return 0
    df = df.sort_values(["created", "model_id"], ascending=[False, True], kind="stable")
    total = len(df)
    if args.limit > 0:
        df = df.head(args.limit)
    shown = [m for m in MAIN_METRICS if df[m].notna().any()]
    table = df[["model_id", "dataset", "search", "stage", "status", *shown, "params"]].copy()
    for m in shown:
        table[m] = table[m].map(_number)
    table["params"] = table["params"].map(lambda v: _number(v, 0))  # a count: 961, not 961.0000
    from orchestrator.zoo import has_weights

    table["weights"] = df["weights"].map(lambda w: "yes" if has_weights(w) else "-")
    if df["synthetic"].any():
        table["data"] = df["synthetic"].map(lambda s: "SYNTHETIC" if s else "real")
    notes = [", ".join(_notes(row)) for row in df.to_dict("records")]
    if any(notes):
        table["notes"] = notes
    print(table.to_string(index=False))
    if len(df) < total:
        print(f"({len(df)} of {total} models; --limit 0 lists all)")
    return 0


def zoo_show(args: argparse.Namespace) -> int:
    """One model's row as JSON."""
    from orchestrator.zoo import get_model, row_json, weights_reason

    row = row_json(get_model(args.zoo, args.model_id))
    row["one_class"] = one_class(row)
    if row["one_class"]:
        row["warning"] = ONE_CLASS_TEXT
    if not row.get("weights"):
        row["no_weights"] = weights_reason(row)
    print(json.dumps(row, indent=2, default=str))
    return 0


def zoo_best(args: argparse.Namespace) -> int:
    """The best usable models by a metric, one per line, model id first; what was skipped on stderr."""
    import sys

    from medcore.errors import MedtuneError
    from orchestrator.zoo import has_weights, ranked, usable, weights_reason

    everything = ranked(args.zoo, args.metric, dataset=args.dataset)
    df, skipped = usable(everything, weights=not args.any, baselines=args.baselines)
    where = f" for {args.dataset}" if args.dataset else ""
    skip = skipped_line(skipped)
    if everything.empty:
        raise MedtuneError(f"no model with status ok and a {args.metric}{where} in zoo {args.zoo}")
    if df.empty:
        raise MedtuneError(f"no usable model with a {args.metric}{where} in zoo {args.zoo}: {skip}")
    for row in df.head(max(int(args.n), 0)).to_dict("records"):
        weights = "weights" if has_weights(row["weights"]) else f"no weights ({weights_reason(row)})"
        marks = "".join(f"  {mark}" for mark in (*_notes(row), *(["SYNTHETIC"] if row["synthetic"] else [])))
        value = _number(row[args.metric], 0 if args.metric in COUNTS else 4)
        print(f"{row['model_id']}  {args.metric}={value}  {row['dataset']} "
              f"{row['search']}/{row['stage']} {row['family']} params={_number(row['params'], 0)}  {weights}{marks}")
    if skip:
        print(skip, file=sys.stderr)
    return 0


def export(args: argparse.Namespace) -> int:
    """Export one model: model.pt2, model.onnx (when possible) and card.json under --out."""
    from pathlib import Path

    from orchestrator.export import export_model

    card = export_model(args.zoo, args.model_id, args.out)
    out = Path(args.out)
    if card["synthetic"]:
        print("NOTE: this model was trained on SYNTHETIC data")
    if card["one_class"]:
        print(f"WARNING: this model {ONE_CLASS_TEXT}")
    print(f"wrote {out / 'model.pt2'} (load: {card['load']})")
    if card["onnx"].get("file"):
        print(f"wrote {out / card['onnx']['file']}")
    else:
        print(f"skipped ONNX: {card['onnx']['skipped']}")
    print(f"wrote {out / 'card.json'}")
    return 0


def add_commands(subparsers) -> None:
    """Register ``zoo`` (list, show, best) and ``export`` on the top-level ``medtune`` subparsers."""
    zoo = subparsers.add_parser("zoo", help="browse the model zoo").add_subparsers(dest="zoo_command", required=True)

    ls = zoo.add_parser("list", help="a table of the zoo's models, newest first")
    ls.add_argument("--zoo", required=True, help="zoo folder (or a pyarrow.fs URI)")
    ls.add_argument("--dataset", help="only this dataset flag")
    ls.add_argument("--search", help="only this search (ode, compress, ...)")
    ls.add_argument("--limit", type=int, default=50, help="rows to print (0: all)")
    ls.set_defaults(handler=zoo_list)

    show = zoo.add_parser("show", help="one model's row as JSON")
    show.add_argument("model_id")
    show.add_argument("--zoo", required=True)
    show.set_defaults(handler=zoo_show)

    top = zoo.add_parser("best", help="the best models by a metric (model id first on each line)")
    top.add_argument("--zoo", required=True)
    top.add_argument("--dataset")
    top.add_argument("--metric", default=DEFAULT_METRIC,
                     help=f"one of {', '.join(METRICS)} (default {DEFAULT_METRIC}); "
                          f"lowest first for val_loss, latency_ms, params, flops, size_mb")
    top.add_argument("--n", type=int, default=5, help="how many")
    top.add_argument("--any", action="store_true", help="rank rows without stored weights too (not exportable)")
    top.add_argument("--baselines", action="store_true",
                     help="rank the hand-made baselines too (the ODE --baseline, the compression base, ...)")
    top.set_defaults(handler=zoo_best)

    exp = subparsers.add_parser("export", help="export a zoo model (model.pt2, model.onnx, card.json)")
    exp.add_argument("model_id")
    exp.add_argument("--zoo", required=True)
    exp.add_argument("--out", required=True, help="folder for model.pt2, model.onnx and card.json")
    exp.set_defaults(handler=export)
