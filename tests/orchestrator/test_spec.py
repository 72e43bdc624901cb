"""The YAML spec (fast, no Ray): every refusal is one line naming the field path; expansion of
``datasets:``, topological order, relative paths against the spec file's folder."""
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from medcore.errors import ConfigError
from orchestrator import registry
from orchestrator.config import SearchConfig
from orchestrator.schema import leaves, opt, path_fields
from orchestrator.data import SAMPLE_ROOT
from orchestrator.spec import _resolve_paths, load_spec, parse_spec

SAMPLE = {"dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT)}


def ode(name, **fields):
    return {"name": name, "type": "ode", **SAMPLE, "budget": 4, "pop_size": 4, **fields}


def refusal(data, base=".") -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, base)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("data,message", [
    ({"searches": [ode("a"), ode("b", budget=5, pop_size=20)]},
     "searches[1].budget: must be at least pop_size (20), got 5"),
    ({"searches": [{"name": "a", "type": "x"}]}, "searches[0].type: unknown search 'x'; known searches: ode, compress"),
    ({"searches": [{"name": "a"}]}, "searches[0].type: required; known searches: ode, compress"),
    ({"searches": [{"type": "ode"}]}, "searches[0].name: required"),
    ({"searches": [ode("A b")]}, "searches[0].name: must be lowercase letters, digits, '_' or '-', got 'A b'"),
    ({"searches": [ode("zoo")]}, "searches[0].name: 'zoo' is reserved"),
    ({"searches": [ode("a"), ode("b"), ode("c", after=["y"])]}, "searches[2].after: unknown search 'y'"),
    ({"searches": [ode("a", after=["b"]), ode("b", after="a")]}, "searches: dependency cycle a -> b -> a"),
    ({"searches": [ode("a", after=["a"])]}, "searches: dependency cycle a -> a"),
    ({"searches": [ode("a"), ode("b", after=["c"]), ode("c", after=["d"]), ode("d", after=["b"])]},
     "searches: dependency cycle b -> c -> d -> b"),
    ({"searches": [ode("a"), ode("a")]}, "searches[1].name: duplicate search name 'a'"),
    ({"searches": [ode("m-adrenalmnist3d"), {"name": "m", "type": "ode", "data_root": str(SAMPLE_ROOT),
                                            "datasets": ["adrenalmnist3d"]}]},
     "searches[1].name: duplicate search name 'm-adrenalmnist3d'"),
    ({"searches": [ode("a")], "runs": 3}, "runs: unknown key; known keys: storage, zoo, searches"),
    ({"searches": []}, "searches: must list at least one search"),
    ({"storage": "x"}, "searches: must list at least one search"),
    (["a"], "a spec is a mapping with `searches:`, got list"),
    ({"searches": ["a"]}, "searches[0]: expected a mapping with name and type, got str"),
    ({"searches": [ode("a", budget="many")]}, "searches[0].budget: expected int, got 'many'"),
    ({"searches": [ode("a", fit={"max_epochs": 0})]}, "searches[0].fit.max_epochs: must be >= 1, got 0"),
    ({"searches": [ode("a", fit={"epochs": 3})]}, "searches[0].fit.epochs: unknown field for FitOptions"),
    ({"searches": [ode("a", fit=3)]}, "searches[0].fit: expected a mapping, got int"),
    ({"searches": [ode("a", resources={"cpus_per_trial": 0})]}, "searches[0].resources.cpus_per_trial: must be > 0"),
    ({"searches": [ode("a", after=[1])]}, "searches[0].after: expected a list of search names, got [1]"),
    ({"searches": [ode("a", out="x")]}, "searches[0].out: set by the coordinator, not the spec"),
    ({"searches": [ode("a", resume=True)]}, "searches[0].resume: set by the coordinator, not the spec"),
    ({"searches": [ode("a", zoo="z")]}, "searches[0].zoo: set by the coordinator, not the spec"),
    ({"searches": [ode("a", resources={"address": "auto"})]}, "searches[0].resources.address: set by the coordinator"),
    ({"searches": [ode("a", dataset="nosuchmnist")]}, "searches[0].dataset: unknown MedMNIST flag 'nosuchmnist'"),
    ({"searches": [ode("a", size=64)]}, "searches[0].data_root: dataset file "),
    ({"searches": [{**ode("a"), "datasets": ["adrenalmnist3d"]}]},
     "searches[0].datasets: give dataset or datasets, not both"),
    ({"searches": [{"name": "m", "type": "ode", "data_root": str(SAMPLE_ROOT), "datasets": ["adrenalmnist3d", "x y"]}]},
     "searches[0].datasets[1]: not a MedMNIST flag: 'x y'"),
    ({"searches": [{"name": "m", "type": "ode", "data_root": str(SAMPLE_ROOT), "datasets": []}]},
     "searches[0].datasets: expected a non-empty list of dataset flags"),
    ({"searches": [{"name": "m", "type": "compress", "data_root": str(SAMPLE_ROOT),
                    "datasets": ["adrenalmnist3d", "breastmnist"]}]}, "searches[0].data_root: dataset file "),
    ({"searches": [{"name": "c", "type": "compress", **SAMPLE, "model": "vgg"}]},
     "searches[0].model: unknown model 'vgg'"),
])
def test_refusals_are_one_line_naming_the_field(data, message):
    assert message in refusal(data)


def test_missing_dataset_file_names_the_path(tmp_path):
    text = refusal({"searches": [ode("a", data_root=str(tmp_path))]})
    assert text.startswith("searches[0].data_root: dataset file ") and str(tmp_path / "adrenalmnist3d.npz") in text


def test_missing_file_without_data_root_names_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_DATA", str(tmp_path))
    text = refusal({"searches": [{"name": "a", "type": "ode", "dataset": "breastmnist"}]})
    assert text.startswith("searches[0].dataset: dataset file ") and str(tmp_path / "breastmnist.npz") in text


def test_topological_order_keeps_spec_order_among_ready_searches():
    spec = parse_spec({"searches": [ode("d", after=["b", "c"]), ode("a"), ode("b", after=["a"]), ode("c"),
                                    ode("e")]}, ".")
    assert [e.name for e in spec.searches] == ["a", "c", "e", "b", "d"]
    assert spec.entry("d").after == ("b", "c")


def test_datasets_expand_into_one_search_each_and_after_a_group_waits_for_all(tmp_path):
    from orchestrator.data import make_synthetic

    make_synthetic("breastmnist", tmp_path, n_samples=(8, 4, 4))
    make_synthetic("adrenalmnist3d", tmp_path, n_samples=(8, 4, 4))
    spec = parse_spec({"searches": [
        {"name": "many", "type": "compress", "data_root": str(tmp_path), "datasets": ["breastmnist", "adrenalmnist3d"],
         "budget": 4, "initial": 3},
        ode("after_all", data_root=str(tmp_path), after=["many"])]}, ".")
    names = [e.name for e in spec.searches]
    assert names == ["many-breastmnist", "many-adrenalmnist3d", "after_all"]
    first, second = spec.searches[:2]
    assert (first.config.dataset, second.config.dataset) == ("breastmnist", "adrenalmnist3d")
    assert first.type == "compress" and first.config.budget == 4 and first.config.initial == 3
    assert spec.entry("after_all").after == ("many-breastmnist", "many-adrenalmnist3d")


def test_load_spec_resolves_relative_paths_against_the_spec_folder(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    data_root = Path("..") / "data"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "adrenalmnist3d.npz").write_bytes((SAMPLE_ROOT / "adrenalmnist3d.npz").read_bytes())
    text = yaml.safe_dump({"storage": "../runs/r1", "zoo": "shared_zoo", "searches": [
        {"name": "a", "type": "ode", "dataset": "adrenalmnist3d", "data_root": str(data_root), "storage": "tune_a",
         "budget": 4, "pop_size": 4}]})
    (folder / "s.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # any other working directory
    spec = load_spec(folder / "s.yaml")
    entry = spec.searches[0]
    assert entry.config.data_root == str((tmp_path / "data").resolve())
    assert entry.config.storage == str((folder / "tune_a").resolve())
    assert spec.storage == str((tmp_path / "runs" / "r1").resolve())
    assert spec.zoo == str((folder / "shared_zoo").resolve()) and spec.zoo_path("/elsewhere") == spec.zoo
    assert spec.text == text
    # the coordinator's fields: each search in <run>/<name>, one zoo, resume on `medtune resume`
    cfg = entry.run_config(tmp_path / "run" / "a", spec.zoo, resume=True)
    assert (cfg.out, cfg.zoo, cfg.resume) == (str(tmp_path / "run" / "a"), spec.zoo, True)
    assert entry.config.out != cfg.out  # the spec's entry is not changed
    # base_dir: `medtune resume` reads the run's copy with the original folder
    (tmp_path / "copy.yaml").write_text(text)
    assert load_spec(tmp_path / "copy.yaml", base_dir=folder).searches[0].config.data_root == entry.config.data_root


def test_default_zoo_is_in_the_run_folder(tmp_path):
    spec = parse_spec({"searches": [ode("a")]}, ".")
    assert spec.storage is None and spec.zoo_path(tmp_path) == str(tmp_path.resolve() / "zoo")


def test_uris_stay_as_written():
    spec = parse_spec({"zoo": "s3://bucket/zoo", "searches": [ode("a", storage="s3://bucket/tune")]}, "/x")
    assert spec.zoo == "s3://bucket/zoo" and spec.searches[0].config.storage == "s3://bucket/tune"


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="spec file .* not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("searches: [\n  - {name: a\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML \(line \d+, column \d+\)"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_spec(tmp_path / "empty.yaml")


def test_the_demo_spec_is_valid():
    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "demo.yaml")
    assert {e.type for e in spec.searches} == {"ode", "compress"}
    assert all(e.config.data_root == str(SAMPLE_ROOT.resolve()) for e in spec.searches)


def test_the_pbcnas3d_spec_is_the_papers_protocol_on_a_gpu(tmp_path, monkeypatch):
    """It names no data_root: the files come from $MEDTUNE_DATA (here synthetic stand-ins)."""
    from orchestrator.data import make_synthetic

    for flag in ("adrenalmnist3d", "vesselmnist3d"):
        make_synthetic(flag, tmp_path, n_samples=(8, 4, 4))
    monkeypatch.setenv("MEDTUNE_DATA", str(tmp_path))
    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "pbcnas3d.yaml")
    assert [e.name for e in spec.searches] == ["pbcnas3d-adrenalmnist3d", "pbcnas3d-vesselmnist3d"]
    c = spec.searches[1].config
    assert (c.dataset, c.size, c.budget, c.pop_size, c.fraction, c.fidelity, c.top_k) == \
        ("vesselmnist3d", 28, 200, 20, 0.25, "paper", 3)
    assert (c.fit.max_epochs, c.fit.patience, c.resources.gpus_per_trial, c.data_root) == (50, 5, 1.0, None)


def test_a_search_with_its_own_datasets_field_takes_the_list_whole(tmp_path):
    """mednns holds several datasets out in turn: `datasets:` is its field, not a fan-out, and every
    flag's file is checked."""
    from orchestrator.data import make_synthetic

    make_synthetic("breastmnist", tmp_path, n_samples=(8, 4, 4))
    item = {"name": "meta", "type": "mednns", "data_root": str(tmp_path), "datasets": ["breastmnist", "retinamnist"]}
    with pytest.raises(ConfigError, match=r"searches\[0\]\.data_root.*retinamnist"):
        parse_spec({"searches": [item]}, ".")
    make_synthetic("retinamnist", tmp_path, n_samples=(8, 4, 4))
    spec = parse_spec({"searches": [item]}, ".")
    assert [e.name for e in spec.searches] == ["meta"]
    assert spec.searches[0].config.dataset_list() == ["breastmnist", "retinamnist"]


def test_a_segmentation_search_needs_no_medmnist_file():
    spec = parse_spec({"searches": [{"name": "iac", "type": "darts", "data": "synthetic", "size": 32}]}, ".")
    assert spec.searches[0].config.data == "synthetic"


def test_every_searchs_path_fields_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    """Not only data_root / storage / base_checkpoint: darts' data and strategy's checkpoint,
    metaspace and space (a .json file) too; absolute paths, 'synthetic' and JSON text stay."""
    folder = tmp_path / "specs"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.npz").write_bytes(b"")  # the spec checks only that it exists
    (folder / "ckpt").mkdir()
    (folder / "ckpt" / "model.pt").write_bytes(b"")
    (folder / "meta").mkdir()
    (folder / "space.json").write_text('{"norm": ["batch"]}')
    strategy = {"type": "strategy", "dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT)}
    (folder / "s.yaml").write_text(yaml.safe_dump({"searches": [
        {"name": "iac", "type": "darts", "data": "sub/x.npz", "size": 32},
        {"name": "iac-synth", "type": "darts", "data": "synthetic", "size": 32},
        {"name": "st", **strategy, "checkpoint": "ckpt", "metaspace": "./meta", "space": "space.json"},
        {"name": "st-json", **strategy, "checkpoint": str(folder / "ckpt" / "model.pt"),
         "space": '{"norm": ["batch"]}'}]}))
    monkeypatch.chdir(tmp_path)  # any other working directory
    spec = load_spec(folder / "s.yaml")
    darts, synth, st, st_json = (spec.entry(n).config for n in ("iac", "iac-synth", "st", "st-json"))
    assert darts.data == str((folder / "sub" / "x.npz").resolve()) and synth.data == "synthetic"
    assert (st.checkpoint, st.metaspace, st.space) == tuple(str((folder / p).resolve())
                                                           for p in ("ckpt", "meta", "space.json"))
    assert st.data_root == str(SAMPLE_ROOT)  # absolute: kept
    assert (st_json.checkpoint, st_json.space) == (str(folder / "ckpt" / "model.pt"), '{"norm": ["batch"]}')


def test_a_path_field_that_is_not_a_path_names_its_field():
    text = refusal({"searches": [{"name": "st", "type": "strategy", **SAMPLE, "metaspace": 5}]})
    assert text == "searches[0].metaspace: expected a path, got 5"
    text = refusal({"searches": [{"name": "iac", "type": "darts", "data": " ", "size": 32}]})
    assert text.startswith("searches[0].data: must name a Decathlon folder")  # the config's own words


# Every field holding a local file or folder, per search; a new one must be marked path=True
# in orchestrator/config.py (the spec resolves exactly these) and listed here.
SHARED_PATHS = {"data_root", "out", "storage", "zoo"}
EXPECTED_PATHS = {"ode": SHARED_PATHS, "compress": SHARED_PATHS | {"base_checkpoint"},
                  "strategy": SHARED_PATHS | {"checkpoint", "metaspace", "space"},
                  "mednns": SHARED_PATHS, "darts": SHARED_PATHS | {"data"}}
# Names that suggest a path, whichever search gains such a field.
PATH_NAMES = {"data", "space", "out", "zoo", "storage", "checkpoint", "metaspace"}
PATH_SUFFIXES = ("_root", "_dir", "_path", "_file", "_folder", "_checkpoint", "_storage")


def test_every_config_field_holding_a_path_is_marked():
    assert set(EXPECTED_PATHS) == set(registry.BUILTIN)
    for name, expected in EXPECTED_PATHS.items():
        cls = registry.config_cls(name)
        assert set(path_fields(cls)) == expected, name
        suggested = {path for path, f, tp in leaves(cls) if str in (tp, *typing.get_args(tp))
                     and (f.name in PATH_NAMES or f.name.endswith(PATH_SUFFIXES))}
        assert suggested <= set(path_fields(cls)), name


@dataclass
class _Weights:
    file: str | None = opt(None, "weights", path=True)
    strict: bool = opt(True, "strict loading")


@dataclass
class _NestedConfig(SearchConfig):
    weights: _Weights = opt(factory=_Weights)


def test_a_nested_path_field_resolves_inside_its_mapping(tmp_path):
    assert "weights.file" in path_fields(_NestedConfig)
    fields = {"weights": {"file": "w.pt", "strict": False}, "data_root": "d"}
    out = _resolve_paths(_NestedConfig, fields, "searches[0]", tmp_path)
    assert out == {"weights": {"file": str((tmp_path / "w.pt").resolve()), "strict": False},
                   "data_root": str((tmp_path / "d").resolve())}
    assert fields == {"weights": {"file": "w.pt", "strict": False}, "data_root": "d"}  # not changed
    assert _resolve_paths(_NestedConfig, {"weights": 5}, "searches[0]", tmp_path) == {"weights": 5}
    with pytest.raises(ConfigError, match=r"^searches\[0\]\.weights\.file: expected a path, got 3$"):
        _resolve_paths(_NestedConfig, {"weights": {"file": 3}}, "searches[0]", tmp_path)
