"""The shared test Ray's leak guard: a test that leaves a CPU held gets Ray restarted after it,
so a leak (ray-project/ray#64693) cannot starve the tests that follow."""
from tests import conftest


def test_a_held_cpu_restarts_ray_and_a_free_one_keeps_it(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return 1

    holder = Holder.remote()
    assert ray.get(holder.ping.remote()) == 1
    assert conftest.held_cpus(ray) == 1
    before = list(conftest.restarts)
    try:
        assert conftest.leak_guard(ray, "leaky test", wait_s=0.5) is False
        assert not ray.is_initialized()  # the next test that asks for ray_local starts a fresh one
        assert conftest.restarts == before + ["leaky test"]
    finally:
        conftest.restarts[:] = before
    conftest._start()
    assert conftest.held_cpus(ray) == 0
    assert conftest.leak_guard(ray, "clean test", wait_s=5) is True and ray.is_initialized()
