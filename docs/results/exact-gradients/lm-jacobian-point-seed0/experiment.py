"""Does torchdeq's IFT win because it evaluates J at T(z*)? Run at commit 9731e26, where ift took J at u* (since then
ift takes it at T(u*) itself, so this subclass would now step twice). Usage: python experiment.py SEED"""

import sys
import warnings

import torch

from jfb.backward import IFT, register_backward
from jfb.benchmarks.zoo import ZooBenchSettings, zoo_table


class IFTNext(IFT):
    """IFT whose linear solve takes J at T(u*) instead of u* (torchdeq's choice); the output is T(u*) as before."""

    def _linear_solve(self, T, u_star, b, max_iter, stats, transposed=False, warm=False):
        with torch.no_grad():
            nxt = T(u_star.detach())
        return super()._linear_solve(T, nxt, b, max_iter, stats, transposed, warm)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    register_backward("iftnext", IFTNext)
    seed = int(sys.argv[1])
    engines = ("ift", "iftnext:max_iter=40", "torchdeq-ift")
    settings = ZooBenchSettings(workloads=("lm",), engines=engines, seed=seed, out=f"/tmp/exact/hyp-seed{seed}")
    for row in zoo_table(settings).rows:
        print(row)
