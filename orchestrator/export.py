"""Export a zoo model for use outside medtune: ``model.pt2`` (torch.export), ``model.onnx``, ``card.json``.

The network is rebuilt from the row's ``build`` recipe (``{"builder": name, "kwargs": {...}}``,
:mod:`trainables.builders`; the card names the builder by name even for an older zoo's path)
and its trained weights (a folder holding ``model.pt``, a state_dict), then exported with
:func:`torch.export.export` (TorchScript is deprecated in torch 2.13) with a dynamic batch
dimension. The exported program needs only torch to run: ``torch.export.load('model.pt2').module()(x)``.
ONNX goes through ``torch.onnx.export`` (``dynamo=True``, which needs ``onnx`` and ``onnxscript``);
if that fails the card names why.

``card.json`` says what the network returns (logits: every search trains on raw outputs with
BCE-with-logits or cross-entropy), how scores and decisions follow from them (the rule medmnist's
``getACC`` applies, which the recorded ACC used), the class names (``medmnist.INFO``) and whether
the model is a baseline or predicts one class for every case.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

from medcore.errors import MedtuneError
from medcore.records import one_class
from orchestrator.atomic import write_json
from orchestrator.zoo import get_model, has_weights, metrics_of, row_json, weights_reason

PREPROCESSING = "uint8 images scaled to [0,1] float32, layout N,C,(D),H,W"
WEIGHTS_FILE = "model.pt"
ATOL = 1e-5
ONNX_ATOL = 1e-4  # onnxruntime's kernels differ from torch's in the last float32 bits
BINARY, MULTI_LABEL, SEGMENTATION = "binary-class", "multi-label, binary-class", "segmentation"


def class_names(dataset: str) -> list[str] | None:
    """The dataset's class (or label) names in output order, from ``medmnist.INFO``; None where it has none."""
    try:
        import medmnist

        labels = medmnist.INFO.get(dataset, {}).get("label")
    except ImportError:
        return None
    if not isinstance(labels, dict) or not labels:
        return None
    return [labels[k] for k in sorted(labels, key=int)]


def output_spec(task: str, shape: list[int], names: list[str] | None) -> dict:
    """What the exported network returns and how a prediction follows from it, by task."""
    out = {"kind": "logits", "shape": ["N", *shape]}
    if task == BINARY:
        positive = f"class 1 ({names[1]})" if names and len(names) > 1 else "class 1"
        return {**out, "scores": "sigmoid(logits)[:, 0] = probability of class 1",
                "decision": f"{positive} where sigmoid(logit) > 0.5, i.e. logit > 0; else class 0",
                "threshold": {"probability": 0.5, "logit": 0.0}}
    if task == MULTI_LABEL:
        return {**out, "scores": "sigmoid(logits): one independent probability per label",
                "decision": "label j present where sigmoid(logits[:, j]) > 0.5, i.e. logits[:, j] > 0",
                "threshold": {"probability": 0.5, "logit": 0.0}}
    if task == SEGMENTATION:
        if shape and shape[0] == 1:
            return {**out, "scores": "sigmoid(logits) per voxel", "decision": "foreground where logit > 0",
                    "threshold": {"probability": 0.5, "logit": 0.0}}
        return {**out, "scores": "softmax(logits, dim=1) per voxel", "decision": "argmax over dim 1 per voxel",
                "threshold": None}
    return {**out, "scores": "softmax(logits, dim=1): class probabilities",
            "decision": "argmax over dim 1 (the most probable class)", "threshold": None}


def build_model(build: dict):
    """Call the recipe's builder (a :mod:`trainables.builders` name, or a legacy
    ``module:function`` path of an older zoo) with its kwargs."""
    from trainables.builders import UnknownBuilder, resolve

    try:
        builder = resolve(build.get("builder") if isinstance(build, dict) else None)
    except UnknownBuilder as exc:
        raise MedtuneError(f"cannot rebuild the model from {json.dumps(build, default=str)[:300]}: {exc}") from None
    return builder(**dict(build.get("kwargs") or {}))


def read_state_dict(weights: str) -> dict:
    """The state_dict under a weights reference: a local folder / ``model.pt`` path or a pyarrow.fs URI."""
    import pyarrow.fs as pafs
    import torch

    if "://" in weights:
        try:
            fs, path = pafs.FileSystem.from_uri(weights)
        except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for bad URIs
            raise MedtuneError(f"weights {weights}: {str(exc).strip().splitlines()[0]}") from None
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(weights).expanduser().resolve())
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        path = f"{path.rstrip('/')}/{WEIGHTS_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise MedtuneError(f"weights {weights} not found (expected a folder holding {WEIGHTS_FILE})")
    with fs.open_input_stream(path) as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _export_onnx(model, x, expected, path: Path) -> dict:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notices
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
        os.replace(tmp, path)
        out = {"file": path.name, "exporter": "torch.onnx.export(dynamo=True)", "opset": _opset(path),
               **_onnx_check(path, x, expected)}
        if out.get("max_abs_diff", 0.0) > ONNX_ATOL:  # a wrong file is worse than none
            path.unlink()
            return {"file": None, "skipped": f"the ONNX model differs from the rebuilt one by "
                                             f"{out['max_abs_diff']:.2e} (> {ONNX_ATOL}) under {out['checked']}"}
        return out
    except Exception as exc:  # noqa: BLE001 -- any exporter failure is recorded, not fatal
        Path(tmp).unlink(missing_ok=True)
        text = str(exc).strip().splitlines()
        return {"file": None, "skipped": f"{type(exc).__name__}: {text[0] if text else ''}"[:300]}


def _onnx_check(path: Path, x, expected) -> dict:
    """The ONNX file's largest difference from the rebuilt model under onnxruntime, where installed."""
    try:
        import onnxruntime
    except ImportError:
        return {"checked": "not checked: onnxruntime is not installed"}
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        [got] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    except Exception as exc:  # noqa: BLE001 -- recorded on the card; the .pt2 is the primary export
        return {"checked": f"onnxruntime failed: {type(exc).__name__}: {str(exc).strip()[:200]}"}
    return {"checked": f"onnxruntime {onnxruntime.__version__}",
            "max_abs_diff": float(abs(got - expected.numpy()).max())}


def _opset(path: Path):
    try:
        import onnx

        return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain == "")
    except Exception:  # noqa: BLE001 -- the opset is informative only
        return None


def export_model(zoo_path, model_id: str, out_dir) -> dict:
    """Write ``model.pt2``, ``model.onnx`` (when the exporter works) and ``card.json``; return the card."""
    import torch

    row = get_model(zoo_path, model_id)
    if not has_weights(row.get("weights")):
        reason = weights_reason(row)
        why = "" if reason == "no stored weights" else f" ({reason})"
        raise MedtuneError(f"model {model_id} has no stored weights{why}; only models with weights "
                           f"(e.g. retrained top models) can be exported; `medtune zoo best --zoo {zoo_path}` "
                           f"lists them")
    if not row.get("build"):
        raise MedtuneError(f"model {model_id} has no build recipe; cannot rebuild it for export")
    if not row.get("input_shape"):
        raise MedtuneError(f"model {model_id} has no input shape; cannot export it")
    build = json.loads(row["build"])
    model = build_model(build)
    # a recipe that names the weights reference itself (MedNNS: a subnet extracted from its
    # supernet folder) rebuilds the trained network; there is no separate state_dict to load
    by_builder = row["weights"] in (build.get("kwargs") or {}).values()
    if not by_builder:
        try:
            model.load_state_dict(read_state_dict(row["weights"]))
        except RuntimeError as exc:
            raise MedtuneError(f"weights {row['weights']} do not fit the rebuilt model {model_id}: "
                               f"{str(exc).splitlines()[0]}") from None
    model.eval()

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    x = torch.rand(2, *row["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        try:
            program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
            dynamic_batch = True
        except Exception:  # noqa: BLE001 -- a model that specialises on batch size exports static
            program = torch.export.export(model, (x,))
            dynamic_batch = False
        diff = float((program.module()(x) - expected).abs().max())
    if diff > ATOL:
        raise MedtuneError(f"exported model {model_id} differs from the rebuilt one by {diff:.2e} (> {ATOL})")
    pt2 = out / "model.pt2"
    tmp = out / ".model.tmp.pt2"  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    os.replace(tmp, pt2)
    onnx = _export_onnx(model, x, expected, out / "model.onnx")

    parsed = row_json(row)
    names, names_note = class_names(row["dataset"]), None
    outputs = int(expected.shape[1]) if expected.dim() > 1 else 1
    if names and row["task"] != SEGMENTATION and len(names) != (2 if row["task"] == BINARY else outputs):
        names_note = f"medmnist.INFO lists {len(names)} labels for {row['dataset']}, the model has {outputs} outputs"
        names = None
    card = {
        "model_id": model_id, "dataset": row["dataset"], "size": row["size"], "spatial_dims": row["spatial_dims"],
        "task": row["task"], "search": row["search"], "run": row["run"], "stage": row["stage"],
        "family": row["family"], "status": row["status"], "synthetic": bool(row["synthetic"]),
        "metrics": metrics_of(row), "architecture": parsed["architecture"],
        "input_shape": list(row["input_shape"]), "preprocessing": PREPROCESSING,
        "output": output_spec(row["task"], list(expected.shape[1:]), names), "class_names": names,
        "class_names_source": f"medmnist.INFO[{row['dataset']!r}]['label']" if names else names_note,
        "baseline": bool(row.get("baseline")), "one_class": one_class(row),
        "build": parsed["build"], "weights": row["weights"],  # the builder by name (row_json)
        "weights_loaded_by": "builder" if by_builder else WEIGHTS_FILE,
        "files": {"pt2": pt2.name, "onnx": onnx.get("file")},
        "load": "torch.export.load('model.pt2').module()",
        "dynamic_batch": dynamic_batch, "max_abs_diff": diff, "onnx": onnx,
        "torch_version": torch.__version__, "medtune_version": row["medtune_version"],
        "exported": datetime.now(timezone.utc).isoformat(),
    }
    if card["synthetic"]:
        card["note"] = "SYNTHETIC: trained and evaluated on synthetic data"
    if card["one_class"]:
        card["warning"] = "predicts one class for every case (on its test split, else val): ACC is that class's share"
    write_json(out / "card.json", card)
    return card
