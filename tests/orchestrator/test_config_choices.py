"""A field's ``choices`` are checked in one place (``orchestrator.schema.check_values``), so a bad
choice is the same one line from a CLI flag, a spec and the Python API, and ``--help`` still lists
the choices. Fast tier: every refusal comes before anything starts, no Ray."""
import pytest

from medcore.errors import ConfigError
from orchestrator import registry
from orchestrator.cli import main
from orchestrator.driver import run_search
from orchestrator.schema import _typed_leaves, flag_names
from orchestrator.spec import parse_spec


def _choice_fields() -> list[tuple[str, str, object]]:
    """``(search, field path, a value outside its choices)`` for every choice field of every search."""
    found = []
    for name in registry.names():
        for path, _, kind, _, choices in _typed_leaves(registry.config_cls(name)):
            if choices is not None:
                found.append((name, path, max(choices) + 1 if kind is int else "nope"))
    return found


def _nested(path: str, value) -> dict:
    *parents, leaf = path.split(".")
    data = node = {}
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def _api_config(cls, path: str, value):
    """The config built in Python with ``path`` set to ``value`` (a nested one inside its own class)."""
    *parents, leaf = path.split(".")
    if not parents:
        return cls(**{leaf: value})
    (parent,) = parents
    return cls(**{parent: type(getattr(cls(), parent))(**{leaf: value})})


def _three_ways(capsys, tmp_path, search: str, path: str, value) -> tuple[str, str, str]:
    """The refusal of ``path: value`` as the CLI prints it, as a spec raises it, and as the API does."""
    cls = registry.config_cls(search)
    flag = flag_names(cls)[path]
    assert main(["search", search, flag, str(value), "--out", str(tmp_path / "cli")]) == 2
    cli = capsys.readouterr().err.strip()
    with pytest.raises(ConfigError) as spec:
        parse_spec({"searches": [{"name": "s", "type": search, **_nested(path, value)}]}, str(tmp_path))
    with pytest.raises(ConfigError) as api:
        run_search(search, _api_config(cls, path, value))
    assert api.value.field == path
    assert not (tmp_path / "cli").exists()
    return cli, str(spec.value), str(api.value)


@pytest.mark.parametrize("search,path,value", _choice_fields())
def test_a_bad_choice_is_the_same_line_from_a_flag_a_spec_and_the_api(capsys, tmp_path, search, path, value):
    cli, spec, api = _three_ways(capsys, tmp_path, search, path, value)
    flag = flag_names(registry.config_cls(search))[path]
    message = api.removeprefix(f"{path}: ")
    assert message.startswith("must be ") and "\n" not in message, api
    assert cli == f"medtune: error: {flag}: {message}"
    assert spec == f"searches[0].{path}: {message}"


def test_every_search_with_choices_is_covered():
    assert {(s, p) for s, p, _ in _choice_fields()} >= {
        ("ode", "fidelity"), ("ode", "fit.metric"), ("ode", "fit.head_bias"), ("ode", "fit.precision"),
        ("ode", "fit.memory_format"), ("compress", "searcher"), ("compress", "constraint_metric"),
        ("strategy", "scheduler"), ("strategy", "augment_backend"), ("darts", "implant"),
        ("darts", "spatial_dims")}


@pytest.mark.parametrize("search,path,value,message", [
    ("ode", "fit.metric", "val_f1", "must be val_acc or val_auc, got 'val_f1'"),
    ("ode", "fit.head_bias", "zero", "must be default or prior, got 'zero'"),
    ("ode", "fit.precision", "fp8", "must be auto, fp32, bf16 or fp16, got 'fp8'"),
    ("compress", "constraint_metric", "f1", "must be accuracy, auc or balanced_accuracy, got 'f1'"),
    ("strategy", "scheduler", "hyperband", "must be asha or fifo, got 'hyperband'"),
    ("darts", "implant", "adapter", "must be replace or residual, got 'adapter'"),
    ("darts", "spatial_dims", 4, "must be 2 or 3, got 4"),
])
def test_the_wording_of_a_bad_choice(capsys, tmp_path, search, path, value, message):
    cli, spec, api = _three_ways(capsys, tmp_path, search, path, value)
    assert api == f"{path}: {message}" and spec == f"searches[0].{path}: {message}" and cli.endswith(message)


def test_a_choice_of_the_wrong_type_from_python_is_refused_too():
    cls = registry.config_cls("darts")
    with pytest.raises(ConfigError, match=r"^spatial_dims: must be 2 or 3, got '2'$"):
        cls(spatial_dims="2").validate()


def test_help_still_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["search", "darts", "--help"])
    text = capsys.readouterr().out
    assert "--implant {replace,residual}" in text and "--spatial-dims {2,3}" in text
