"""Malformed specs refused before anything starts (fast, no Ray): `medtune run` prints one line
naming the field, exits 2 and leaves no run folder; the same schema checks serve the CLI flags,
``--config-json`` and Python configs."""
from __future__ import annotations

import argparse
import math
import time

import pytest
import yaml

from medcore.errors import ConfigError
from orchestrator import config as config_module
from orchestrator import registry, spec as spec_module
from orchestrator.cli import _check_run, main
from orchestrator.config import SEED_RANGE, DartsSearchConfig, ODESearchConfig, Resources
from orchestrator.schema import _typed_leaves, from_dict, quote
from orchestrator.data import SAMPLE_ROOT
from orchestrator.spec import MAX_SPEC_BYTES, SearchEntry, load_spec, parse_spec, topological_order

SAMPLE = {"dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT)}


def ode(name="a", **fields) -> dict:
    return {"name": name, "type": "ode", **SAMPLE, "budget": 4, "pop_size": 4, **fields}


@pytest.fixture
def run_refused(tmp_path, capsys, monkeypatch):
    """Write a spec (a dict, YAML text or bytes), `medtune run` it: exit 2, one line, no run folder."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def run(spec) -> str:
        path = tmp_path / "spec.yaml"
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        else:
            path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
        run_dir = tmp_path / "run"
        code = main(["run", str(path), "--out", str(run_dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err.startswith("medtune: error: ") and "\n" not in err and "unexpected" not in err, err
        assert not run_dir.exists()
        return err

    return run


def refusal(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, ".")
    text = str(info.value)
    assert "\n" not in text
    return text


# ---- the YAML itself -------------------------------------------------------------------------

def test_a_key_given_twice_is_refused_naming_it_and_its_lines(run_refused):
    text = f"searches:\n  - name: a\n    type: ode\n    dataset: adrenalmnist3d\n    data_root: {SAMPLE_ROOT}\n" \
           "    pop_size: 4\n    budget: 4\n    budget: 8\n"
    err = run_refused(text)
    assert "(line 8): key 'budget' given twice in one mapping (first on line 7)" in err


def test_a_merge_key_is_not_a_duplicate(tmp_path):
    text = (f"searches:\n  - &base {{name: a, type: ode, dataset: adrenalmnist3d, data_root: {SAMPLE_ROOT}, "
            "budget: 4, pop_size: 4}\n  - <<: *base\n    name: b\n    budget: 8\n")
    (tmp_path / "s.yaml").write_text(text)
    spec = load_spec(tmp_path / "s.yaml")
    assert [(e.name, e.config.budget) for e in spec.searches] == [("a", 4), ("b", 8)]


def test_a_non_utf8_spec_is_refused_in_one_line(run_refused):
    err = run_refused(b"searches:\n  - name: caf\xe9\n    type: ode\n")
    assert "is not UTF-8 text (byte 0xe9 on line 2)" in err


@pytest.mark.parametrize("depth", [25, 5000])
def test_a_deeply_nested_value_is_refused(run_refused, depth):
    err = run_refused(f"searches:\n  - name: a\n    type: ode\n    budget: {'[' * depth}{']' * depth}\n")
    assert "nested more than 20 levels deep" in err or "exceeded maximum nesting depth" in err


def test_the_billion_laughs_bomb_is_refused_fast_in_a_short_line(run_refused):
    lol = ",".join(['"lol"'] * 9)
    lines = [f"a0: &a0 [{lol}]"] + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\nsearches: [{name: x, type: ode, after: *a8}]\n"
    assert len(bomb.encode()) < 600  # 9^9 (387 million) values once expanded
    start = time.perf_counter()
    err = run_refused(bomb)
    assert time.perf_counter() - start < 2
    assert "YAML aliases (*name) expand it by more than 10000 values" in err and len(err) < 300


def test_an_alias_inside_its_own_anchor_is_refused(run_refused):
    assert "an alias used inside its own anchor" in run_refused("searches: &s\n  - *s\n")


def test_a_few_aliases_are_fine(tmp_path):
    text = (f"searches:\n  - name: a\n    type: ode\n    dataset: adrenalmnist3d\n    data_root: {SAMPLE_ROOT}\n"
            "    budget: 4\n    pop_size: 4\n    fit: &fit {max_epochs: 2, lr: 0.01}\n"
            f"  - {{name: b, type: ode, dataset: adrenalmnist3d, data_root: {SAMPLE_ROOT}, budget: 4, pop_size: 4, "
            "fit: *fit}\n")
    (tmp_path / "s.yaml").write_text(text)
    assert [e.config.fit.lr for e in load_spec(tmp_path / "s.yaml").searches] == [0.01, 0.01]


def test_a_number_past_pythons_digit_limit_or_a_bad_date_is_refused(run_refused):
    err = run_refused("searches:\n  - {name: a, type: ode, dataset: 2024-99-99}\n")
    assert "spec.yaml: a value YAML cannot read: month must be in 1..12" in err
    err = run_refused(f"searches:\n  - name: a\n    type: ode\n    budget: {'9' * 5000}\n")
    assert "spec.yaml (line 4): a number of 5000 digits; no setting takes one that large" in err


def test_a_5_mb_spec_is_refused_at_once(run_refused):
    start = time.perf_counter()
    err = run_refused("searches:\n  - name: a\n    type: ode\n    dataset: " + "x" * 5_000_000 + "\n")
    assert time.perf_counter() - start < 5
    assert f"is larger than {MAX_SPEC_BYTES // 1000} kB" in err and len(err) < 300


def test_a_large_spec_of_many_searches_loads_fast(tmp_path):
    parse_spec({"searches": [ode("warm")]}, ".")  # first use imports medmnist, torch, ...
    entry = "  - {{name: s{i}, type: ode, dataset: adrenalmnist3d, data_root: {root}, budget: 4, pop_size: 4{after}}}\n"
    text = "searches:\n" + "".join(entry.format(i=i, root=SAMPLE_ROOT, after=f", after: [s{i - 1}]" if i else "")
                                   for i in range(1000))
    (tmp_path / "s.yaml").write_text(text)
    start = time.perf_counter()
    spec = load_spec(tmp_path / "s.yaml")
    assert time.perf_counter() - start < 5
    assert [e.name for e in spec.searches[:3]] == ["s0", "s1", "s2"] and len(spec.searches) == 1000


def test_names_and_order_are_linear_in_the_searches(monkeypatch):
    """The duplicate-name check and the topological order: 20000 chained searches in well under
    a second each (both were quadratic: minutes)."""
    monkeypatch.setattr(spec_module, "_entries", lambda item, i, base: [
        SearchEntry(item["name"], "ode", tuple(item.get("after", ())), None, i)])
    n = 20000
    items = [{"name": f"s{i}", **({"after": [f"s{i - 1}"]} if i else {})} for i in reversed(range(n))]
    start = time.perf_counter()
    spec = parse_spec({"searches": items}, ".")
    assert time.perf_counter() - start < 2
    assert [e.name for e in spec.searches[:2]] == ["s0", "s1"] and spec.searches[-1].name == f"s{n - 1}"
    with pytest.raises(ConfigError, match=r"searches\[20000\]\.name: duplicate search name 's5'"):
        parse_spec({"searches": items + [{"name": "s5"}]}, ".")


def test_topological_waves_keep_the_spec_order():
    def e(name, *after):
        return SearchEntry(name, "ode", after, None, 0)

    order = topological_order([e("d", "b", "c"), e("a"), e("b", "a"), e("c"), e("e"), e("f", "d", "a")])
    assert [x.name for x in order] == ["a", "c", "e", "b", "d", "f"]


# ---- names -----------------------------------------------------------------------------------

def test_two_searches_with_one_name_are_refused(run_refused):
    assert "searches[1].name: duplicate search name 'a'" in run_refused({"searches": [ode("a"), ode("a")]})


@pytest.mark.parametrize("name,message", [
    ("a/b", "must be lowercase letters, digits, '_' or '-', got 'a/b'"),
    ("a\\b", "must be lowercase letters, digits, '_' or '-', got 'a\\\\b'"),
    ("..", "must be lowercase letters, digits, '_' or '-', got '..'"),
    (".", "must be lowercase letters, digits, '_' or '-', got '.'"),
    ("a\x07b", "must be lowercase letters, digits, '_' or '-', got 'a\\x07b'"),
    ("a\nb", "must be lowercase letters, digits, '_' or '-', got 'a\\nb'"),
    ("-a", "must not start with '-'"),
    ("", "must be lowercase letters"),
    ("a" * 101, "at most 100 characters (it names a folder), got 'aaaa"),
    (7, "expected a name, got 7"),
])
def test_a_search_name_must_be_a_safe_folder_name(name, message):
    text = refusal({"searches": [ode(name)]})
    assert text.startswith("searches[0].name: ") and message in text and len(text) < 300


def test_a_100_character_name_is_fine():
    assert parse_spec({"searches": [ode("a" * 100)]}, ".").searches[0].name == "a" * 100


def test_a_300_character_name_is_refused_by_medtune_run(run_refused):
    err = run_refused({"searches": [ode("n" * 300)]})
    assert "searches[0].name: at most 100 characters" in err and "(300 characters)" in err and len(err) < 300


def test_an_expanded_name_past_the_limit_names_the_dataset():
    text = refusal({"searches": [{"name": "m" * 90, "type": "ode", "data_root": str(SAMPLE_ROOT),
                                  "datasets": ["adrenalmnist3d"]}]})
    assert text.startswith("searches[0].datasets[0]: the search ") and "longer than 100 characters" in text


# ---- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,path", [
    ({"resources": {"cpus_per_trial": math.nan}}, "resources.cpus_per_trial"),
    ({"resources": {"gpus_per_trial": math.inf}}, "resources.gpus_per_trial"),
    ({"resources": {"memory_per_trial_gb": -math.inf}}, "resources.memory_per_trial_gb"),
    ({"fit": {"weight_decay": math.nan}}, "fit.weight_decay"),
    ({"fit": {"lr": math.inf}}, "fit.lr"),
    ({"max_gflops": math.nan}, "max_gflops"),
    ({"F": math.nan}, "F"),
])
def test_nan_and_inf_are_refused_before_anything_starts(run_refused, fields, path):
    err = run_refused({"searches": [ode("a", **fields)]})
    assert f"searches[0].{path}: must be a finite number, got " in err


def test_every_float_field_of_every_search_must_be_finite():
    """The schema's generic check: each float leaf of each registered config, NaN and inf."""
    checked = 0
    for name in registry.names():
        cls = registry.get(name).config_cls
        for path, _, kind, _, _ in _typed_leaves(cls):
            if kind is not float:
                continue
            for bad in (math.nan, math.inf):
                *parents, leaf = path.split(".")
                data = node = {}
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = bad
                with pytest.raises(ConfigError) as info:
                    from_dict(cls, data).validate()
                assert info.value.field == path and "must be a finite number" in str(info.value), (name, path)
                checked += 1
    assert checked >= 20


def test_an_int_past_float_range_in_a_float_field_is_refused():
    text = refusal({"searches": [ode("a", F=10 ** 400)]})
    assert text.startswith("searches[0].F: must be a finite number, got a 401-digit number")


@pytest.mark.parametrize("seed", [-1, 2**32, 200000000000000000000])
def test_a_seed_outside_numpys_range_is_refused(run_refused, seed):
    err = run_refused({"searches": [ode("a", seed=seed)]})
    assert f"searches[0].seed: must be in [0, 4294967295], got {seed}" in err


def test_every_seed_field_has_numpys_range():
    seeds = [(name, path, bounds) for name in registry.names()
             for path, _, _, bounds, _ in _typed_leaves(registry.get(name).config_cls) if "seed" in path]
    assert seeds and all(bounds == SEED_RANGE for _, _, bounds in seeds), seeds
    assert ODESearchConfig(seed=2**32 - 1).validate().seed == 2**32 - 1
    with pytest.raises(ConfigError, match="must be in"):
        ODESearchConfig(seed=-5).validate()  # Python configs get the same check
    with pytest.raises(ConfigError, match=r"runs use seeds seed \.\. seed \+ runs - 1"):
        DartsSearchConfig(seed=2**32 - 1, runs=2).validate()


def test_an_int_field_must_fit_in_64_bits():
    assert refusal({"searches": [ode("a", budget=2**70)]}).startswith(
        "searches[0].budget: must fit in 64 bits, got 1180591620717411303424")


# ---- what this machine cannot give a local run ------------------------------------------------

def test_gpus_on_a_machine_without_one_are_refused_by_medtune_run(run_refused, monkeypatch):
    monkeypatch.setattr(config_module, "local_gpu_count", lambda: 0)
    err = run_refused({"searches": [ode("a", resources={"gpus_per_trial": 0.3})]})
    assert "searches[0].resources.gpus_per_trial: this machine has no GPU, got 0.3" in err


def test_memory_above_this_machines_is_refused_by_medtune_run(run_refused):
    err = run_refused({"searches": [ode("a", resources={"memory_per_trial_gb": 1e6})]})
    assert "searches[0].resources.memory_per_trial_gb: more than this machine's memory (" in err
    assert "GB in all), got 1e+06" in err


@pytest.mark.parametrize("gpus,machine,message", [
    (0.3, 0, "this machine has no GPU"),
    (2, 1, "this machine has 1 GPU, got 2"),
    (1.5, 2, "above 1 must be a whole number"),
    (0.3, 1, None), (1, 1, None), (2, 2, None), (0, 0, None),
])
def test_gpu_requests_against_the_machine(gpus, machine, message):
    r = Resources(gpus_per_trial=gpus)
    if message is None:
        r.check()
        r.check_machine(gpus=machine, memory=2**34)
        return
    with pytest.raises(ConfigError, match=message):
        r.check()
        r.check_machine(gpus=machine, memory=2**34)


def test_an_autoscaling_cluster_or_address_skips_the_machine_check(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "local_gpu_count", lambda: 0)
    Resources(gpus_per_trial=1, memory_per_trial_gb=1e6, autoscale=True).check_machine()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"searches": [ode("a", resources={"gpus_per_trial": 1})]}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="no GPU"):
        _check_run(argparse.Namespace(spec=str(path), address=None))
    _check_run(argparse.Namespace(spec=str(path), address="http://head:8265"))  # the cluster's nodes decide


# ---- what an error line quotes ---------------------------------------------------------------

@pytest.mark.parametrize("fields,path,message", [
    ({"dataset": "x" * 100_000}, "dataset", "longer than 4096 characters: 'xxxx"),
    ({"baseline": "b" * 3000}, "baseline", "unknown baseline 'bbbb"),
    ({"fit": {"metric": "m" * 3000}}, "fit.metric", "must be val_acc or val_auc"),
    ({"budget": "many" * 1000}, "budget", "expected int, got 'many"),
    ({"after": [["x" * 10_000]]}, "after", "expected a list of search names, got [['xxx"),
    ({"type": "t" * 5000}, "type", "unknown search 'tttt"),
    ({"data_root": "d" * 5000}, "data_root", "longer than 4096 characters: 'dddd"),
])
def test_a_long_value_is_quoted_capped(fields, path, message):
    text = refusal({"searches": [ode("a", **fields)]})
    assert text.startswith(f"searches[0].{path}: ") and message in text and len(text) < 300, text[:400]


def test_a_long_unknown_key_is_capped():
    text = refusal({"searches": [ode("a", **{"k" * 10_000: 1})]})
    assert text.startswith("searches[0].kkkk") and "(10000 characters)" in text and len(text) < 400


def test_quote():
    assert quote("abc") == "'abc'"
    assert quote("x" * 1000) == repr("x" * 80) + "… (1000 characters)"
    assert quote(10 ** 4000) == "a 4001-digit number"
    assert quote(-10 ** 5000) == "a number of about 5001 digits"
    deep: list = []
    for _ in range(1000):
        deep = [deep]
    assert len(quote(deep)) <= 81
    loop: list = []
    loop.append(loop)
    assert quote(loop) == "[[[[...]]]]"
    assert len(quote(list(range(10 ** 5)))) <= 81
