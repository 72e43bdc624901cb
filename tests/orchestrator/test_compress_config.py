"""CompressSearchConfig refuses what the compression search would silently ignore: the surrogate
loop's ``budget`` / ``initial`` / ``infill`` with pure CTAEA, a pure-CTAEA run past
``CTAEA_MAX_EVALUATIONS`` real evaluations, and the ``fit`` options its base training never reads
(``head_bias``, ``precision``, ``memory_format``). Each refusal is one line naming the fields, in
the config's, the CLI's and a spec's words. Fast tier: nothing is trained, no Ray."""
import pytest

from medcore.errors import ConfigError
from orchestrator.cli import main
from orchestrator.config import CTAEA_MAX_EVALUATIONS, BaseTrainOptions, CompressSearchConfig
from orchestrator.data import SAMPLE_ROOT
from orchestrator.spec import parse_spec

SAMPLE = {"dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT)}


def _refused(**kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        CompressSearchConfig(**SAMPLE, **kwargs).validate()
    assert "\n" not in str(info.value)
    return info.value


@pytest.fixture
def no_run(monkeypatch):
    """A config that passes validation must not start a search here."""
    def refuse(*args, **kwargs):
        pytest.fail("the config was accepted and the search started")
    monkeypatch.setattr("orchestrator.driver.run_search", refuse)


def _cli_error(capsys, *flags) -> str:
    assert main(["search", "compress", "--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: ") and "\n" not in err, err
    return err


# ---- pure CTAEA: the surrogate's fields, and its evaluation count ---------------------------
@pytest.mark.parametrize("fields,named", [
    ({"budget": 30}, "`budget`=30"),
    ({"initial": 20}, "`initial`=20"),
    ({"infill": 4}, "`infill`=4"),
    ({"budget": 30, "initial": 20, "infill": 4}, "`budget`=30, `initial`=20, `infill`=4"),
])
def test_ctaea_refuses_the_surrogate_fields_it_would_ignore(fields, named):
    exc = _refused(searcher="ctaea", ctaea_pop=20, ctaea_gens=5, **fields)
    assert exc.field == "searcher" and f"ctaea does not read {named} (surrogate only" in exc.message


def test_ctaea_accepts_the_papers_settings_and_the_surrogate_keeps_its_fields():
    for pop, gens in ((20, 5), (10, 10), (4, 1)):  # CTAEA1, CTAEA2, the shipped search test
        CompressSearchConfig(**SAMPLE, searcher="ctaea", ctaea_pop=pop, ctaea_gens=gens).validate()
    # the surrogate searcher reads all three, and CTAEA runs on its surrogates at the defaults (50 x 1000)
    CompressSearchConfig(**SAMPLE, budget=30, initial=20, infill=4).validate()


def test_ctaea_refuses_more_real_evaluations_than_the_bound():
    exc = _refused(searcher="ctaea")  # the defaults are sized for the surrogates: 50 x 1000
    assert exc.field == "ctaea_gens"
    assert f"= 50 x 1000 = 50000 real points, more than {CTAEA_MAX_EVALUATIONS}" in exc.message
    pop = 20
    gens = CTAEA_MAX_EVALUATIONS // pop
    CompressSearchConfig(**SAMPLE, searcher="ctaea", ctaea_pop=pop, ctaea_gens=gens).validate()  # at the bound
    assert "real points, more than" in _refused(searcher="ctaea", ctaea_pop=pop, ctaea_gens=gens + 1).message


def test_ctaea_refusals_in_the_clis_and_a_specs_words(capsys, no_run):
    err = _cli_error(capsys, "--searcher", "ctaea", "--ctaea-pop", "20", "--ctaea-gens", "5", "--budget", "30")
    assert "--searcher: ctaea does not read --budget=30 (surrogate only; pure CTAEA evaluates --ctaea-pop x " \
           "--ctaea-gens points)" in err, err
    err = _cli_error(capsys, "--searcher", "ctaea")
    assert "--ctaea-gens: searcher ctaea would evaluate --ctaea-pop x --ctaea-gens = 50 x 1000" in err, err
    with pytest.raises(ConfigError) as info:
        parse_spec({"searches": [{"name": "c", "type": "compress", **SAMPLE, "searcher": "ctaea", "ctaea_pop": 20,
                                  "ctaea_gens": 5, "initial": 10}]}, ".")
    assert "searches[0].searcher: ctaea does not read initial=10" in str(info.value)


# ---- fit options the base training never reads -----------------------------------------------
@pytest.mark.parametrize("fit,named,field", [
    ({"precision": "bf16"}, "`fit.precision`=bf16", "fit.precision"),
    ({"head_bias": "prior"}, "`fit.head_bias`=prior", "fit.head_bias"),
    ({"memory_format": "contiguous"}, "`fit.memory_format`=contiguous", "fit.memory_format"),
    ({"memory_format": "channels_last", "precision": "fp32"}, "`fit.precision`=fp32, `fit.memory_format`=channels_last",
     "fit.precision"),
])
def test_fit_options_the_base_training_ignores_are_refused(fit, named, field):
    exc = _refused(fit=BaseTrainOptions(**fit))
    assert exc.field == field and f"compress does not support {named}: " in exc.message
    assert "head_bias=default, precision=auto, memory_format=auto" in exc.message


def test_default_fit_options_and_the_read_ones_pass():
    CompressSearchConfig(**SAMPLE, fit=BaseTrainOptions(max_epochs=3, batch_size=16, lr=1e-2, weight_decay=0.0,
                                                         patience=2, metric="val_auc")).validate()


def test_fit_refusals_in_the_clis_and_a_specs_words(capsys, no_run):
    err = _cli_error(capsys, "--precision", "bf16")
    assert "--precision: compress does not support --precision=bf16: its base network always trains with" in err
    with pytest.raises(ConfigError) as info:
        parse_spec({"searches": [{"name": "c", "type": "compress", **SAMPLE, "fit": {"head_bias": "prior"}}]}, ".")
    assert "searches[0].fit.head_bias: compress does not support fit.head_bias=prior" in str(info.value)
