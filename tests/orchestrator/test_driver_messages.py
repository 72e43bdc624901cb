"""What ``check_manifest`` says about a run folder whose run.json is not a search's manifest: one
line that names what is there (never "holds a 'None' run"), and a good manifest still passes."""
import json
from pathlib import Path

import pytest

from medcore.errors import RunError
from orchestrator.driver import check_manifest
from tests.orchestrator.toy_search import ToyConfig, ToySearch


def _folder(tmp_path: Path, content) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps(content))
    return out


def _refusal(out: Path, resume: bool = True) -> str:
    with pytest.raises(RunError) as info:
        check_manifest(ToySearch(), ToyConfig(out=str(out), resume=resume), out)
    message = str(info.value)
    assert "\n" not in message and "None" not in message, message
    return message


@pytest.mark.parametrize("content,says", [
    ({"run": "x-1", "created": 0}, "holds a run.json without a search name (its 'search' field)"),
    ({"search": None, "run": "x-1"}, "holds a run.json without a search name"),
    ({"search": "", "run": "x-1"}, "holds a run.json without a search name"),
    ({"schema": "medtune.coordinator-run/1", "run": "r", "searches": {}}, "holds a spec run (the coordinator's"),
    ({"run": "r", "searches": {"a": {}}}, "holds a spec run"),  # written before the schema was recorded
    (["toy", "x-1"], "holds a run.json that is not a JSON object (a list)"),
    ({"search": "toy"}, "holds a 'toy' run.json without a run id (its 'run' field)"),
    ({"search": "toy", "run": None}, "without a run id"),
])
@pytest.mark.parametrize("resume", [True, False])
def test_a_run_json_that_is_no_search_manifest_is_named_for_what_it_is(tmp_path, content, says, resume):
    message = _refusal(_folder(tmp_path, content), resume)
    assert says in message and message.endswith("choose another --out"), message


def test_another_searchs_manifest_and_a_good_one(tmp_path):
    assert "holds a 'ode' run, not a 'toy' run" in _refusal(_folder(tmp_path, {"search": "ode", "run": "ode-1"}))
    out = tmp_path / "out"
    (out / "run.json").write_text(json.dumps({"search": "toy", "run": "toy-1"}))
    assert check_manifest(ToySearch(), ToyConfig(out=str(out), resume=True), out)["run"] == "toy-1"
    assert "already holds a toy run; pass --resume" in _refusal(out, resume=False)
