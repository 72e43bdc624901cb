"""Partial channels (PC-DARTS, IAC paper eq. 3): the search cell at K=4 vs K=1 (full DARTS).

One run measures, for the same cell (encoder and decoder channels, batch, image size):
* the simulated peak of live tensors in one forward + backward (``trainables.memory``: every
  activation saved for backward, gradient and temporary, on the meta device), per K;
* the measured peak RSS of a fresh subprocess doing real forward + backward steps, less the
  same process's RSS before the first step, per K;
* the median time of a training step (forward + backward), per K.
Target: peak memory at K=4 at most 0.4 x K=1's.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.darts_memory --size 64 --batch 16
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


class OneCell(nn.Module):
    """A search cell as a one-input network: the input's channels are split into (encoder, decoder)."""

    def __init__(self, enc: int, dec: int, k: int, spatial_dims: int):
        super().__init__()
        from trainables.nets.iac_cell import ArchParameters, SearchCell

        self.enc = enc
        self.arch = ArchParameters()
        self.cell = SearchCell(enc, dec, self.arch, k=k, spatial_dims=spatial_dims)

    def forward(self, x):
        return self.cell(x[:, :self.enc], x[:, self.enc:])


def _rss_kib(field: str = "VmRSS") -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(enc: int, dec: int, k: int, size: int, batch: int, dims: int, steps: int) -> dict:
    """Real steps in this process: peak RSS growth (VmHWM - RSS before) and the median step time."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = OneCell(enc, dec, k, dims)
    x = torch.randn(batch, enc + dec, *([size] * dims))
    before = _rss_kib()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        net(x).square().mean().backward()
        times.append(time.perf_counter() - t)
        net.zero_grad(set_to_none=True)
    return {"rss_peak_growth_mb": (_rss_kib("VmHWM") - before) / 1024, "step_s": statistics.median(times[1:] or times)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--enc", type=int, default=32)
    p.add_argument("--dec", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # one K in a fresh process, so its peak RSS is its own
        print(json.dumps(measure(a.enc, a.dec, a.child, a.size, a.batch, a.dims, a.steps)))
        return {}
    from trainables.memory import simulate_peak_bytes

    out = {"cell": {"enc": a.enc, "dec": a.dec, "size": a.size, "batch": a.batch, "spatial_dims": a.dims},
           "note": "shared 2-core CPU machine; compare within this run"}
    for k in (1, 4):
        sim = simulate_peak_bytes(OneCell(a.enc, a.dec, k, a.dims), (a.enc + a.dec,) + (a.size,) * a.dims, a.batch)
        child = subprocess.run([sys.executable, "-m", "benchmarks.darts_memory", "--child", str(k),
                                "--enc", str(a.enc), "--dec", str(a.dec), "--size", str(a.size),
                                "--batch", str(a.batch), "--dims", str(a.dims), "--steps", str(a.steps)],
                               capture_output=True, text=True, check=True)
        out[f"K={k}"] = {"simulated_peak_mb": sim / 2**20, **json.loads(child.stdout.strip().splitlines()[-1])}
    k1, k4 = out["K=1"], out["K=4"]
    out["ratio_K4_over_K1"] = {"simulated_peak": k4["simulated_peak_mb"] / k1["simulated_peak_mb"],
                               "rss_peak_growth": k4["rss_peak_growth_mb"] / k1["rss_peak_growth_mb"],
                               "step_time": k4["step_s"] / k1["step_s"]}
    out["target_met"] = out["ratio_K4_over_K1"]["simulated_peak"] <= 0.4
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
