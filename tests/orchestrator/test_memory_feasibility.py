"""Memory: a candidate whose estimated training memory exceeds the largest node is infeasible,
never trained, and a search that can train nothing exits 1 with the reason counted. Its own
module: it starts Ray with a deliberately small memory resource."""
import pandas as pd
import pytest

from medcore.errors import SearchFailed
from orchestrator.config import FitOptions, ODESearchConfig
from orchestrator.data import SAMPLE_ROOT
from orchestrator.driver import run_search
from tests.conftest import release_shared_ray


@pytest.fixture
def small_memory_ray():
    import ray

    release_shared_ray()
    ray.init(address="local", num_cpus=2, _memory=2**30, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_candidates_that_cannot_fit_the_largest_node_are_infeasible_not_trained(small_memory_ray, tmp_path):
    cfg = ODESearchConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path), budget=4,
                          pop_size=4, fraction=0.1, max_gflops=0.05, top_k=0, fit=FitOptions(max_epochs=1))
    with pytest.raises(SearchFailed, match=r"infeasible, memory above the largest node"):
        run_search("ode", cfg)
    table = pd.read_csv(tmp_path / "candidates.csv")
    memory = table[table.reason.fillna("").str.contains("the largest node offers 1.0 GB")]
    assert len(memory) > 0 and (memory.status == "infeasible").all()
    assert not list((tmp_path / "tune" / "ode_search").glob("cand*"))  # nothing was trained
