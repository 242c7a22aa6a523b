"""Time ``lab up`` and ``lab down`` for labs of several sizes.

Run as root from the repo root:  .venv/bin/python bench/lab_up.py [--sizes 2 5 10] [--repeat 3]

Each run builds a lab with a unique name, checks one underlay ping (so a lab
that came up broken is not counted as fast), tears it down, and records both
durations.  Prints one Markdown table row per size (median, min, max).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import lab  # noqa: E402


def one_run(hosts: int) -> tuple[float, float]:
    name = "b" + secrets.token_hex(3)
    try:
        t0 = time.perf_counter()
        status = lab.up(name, hosts)
        t1 = time.perf_counter()
        if not lab.ping(name, status.hosts[-1].name, status.hosts[0].underlay_ip):
            raise RuntimeError(f"lab {name} came up without underlay reachability")
        t2 = time.perf_counter()
        lab.down(name)
        t3 = time.perf_counter()
    except BaseException:
        lab.down(name)
        raise
    return t1 - t0, t3 - t2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print("| hosts | up median (min–max) s | up per host s | down median (min–max) s |")
    print("|---:|---:|---:|---:|")
    for hosts in args.sizes:
        ups, downs = zip(*(one_run(hosts) for _ in range(args.repeat)), strict=True)
        print(
            f"| {hosts} | {statistics.median(ups):.2f} ({min(ups):.2f}–{max(ups):.2f}) "
            f"| {statistics.median(ups) / hosts:.2f} "
            f"| {statistics.median(downs):.2f} ({min(downs):.2f}–{max(downs):.2f}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
