"""Benchmark: 3D CNN training steps under glibc malloc vs Ray's jemalloc (decay off).

    .venv/bin/python -m benchmarks.jemalloc
Each allocator runs in a fresh process (LD_PRELOAD must be set before start). This is the
measurement behind medtune's default of preloading jemalloc into trial workers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import emit, machine
from orchestrator.runtime import JEMALLOC_CONF, jemalloc_path

STEP = r"""
import json, os, resource, time, torch
from medcore.cell_genotype import CellArchitecture
from trainables.nets.cell_net import CellNet
torch.set_num_threads(1)
torch.manual_seed(0)
arch = CellArchitecture(nodes=((1, "conv3_in_relu"), (2, "mish_conv3")), edges=((0, 1), (0, 6), (1, 2), (2, 6)),
                        n_stacks=1, n_modules=1, n_f_init=8)
net = CellNet(arch, 1, 1, 3)
opt = torch.optim.Adam(net.parameters())
x, y = torch.rand(64, 1, 28, 28, 28), torch.randint(0, 2, (64, 1)).float()
def step():
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
step()
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(6):
    step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s_per_step": (time.perf_counter() - t) / 6, "user_s": r1.ru_utime - r0.ru_utime,
                  "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt}))
"""


def run(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    env.pop("LD_PRELOAD", None) if not env_extra else None
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    glibc = run({})
    jem = run({"LD_PRELOAD": jemalloc_path(), "MALLOC_CONF": JEMALLOC_CONF})
    emit("jemalloc", {"step": "CellNet 3D, batch 64 of 28^3, 1 thread", "glibc": glibc, "jemalloc": jem,
                      "speedup": glibc["s_per_step"] / jem["s_per_step"], "machine": machine()})


if __name__ == "__main__":
    main()
