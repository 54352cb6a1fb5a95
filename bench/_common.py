"""Shared helpers for the benchmark scripts: arguments, device, interleaved timing."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import torch


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="short run (fewer repeats)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    return args


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    line = (f"machine: {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}, device {device}")
    if device.type == "cuda":
        line += f" ({torch.cuda.get_device_name(device)})"
    return line + f"; load average {loadavg()}"


def loadavg() -> str:
    """1-minute load average (other processes share the cores: timings are noisy when it is > ~1)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], *, rounds: int, iters: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Per-call seconds of each function, ``rounds`` samples each (each sample = mean of ``iters`` calls).

    The functions are timed in alternation (order rotated every round) so that slow drifts of
    the machine (other processes, frequency) affect all of them alike.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = fns[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            samples[name].append((time.perf_counter() - t0) / iters)
    return samples


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of the per-round ratio (robust to drift between rounds)."""
    return statistics.median(a / b for a, b in zip(num, den))


def fmt_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def verdict(ratio: float, goal: float | None) -> str:
    """``PASS``/``MISS`` against an upper bound on a ratio ("" without a goal)."""
    if goal is None:
        return ""
    return "PASS" if ratio <= goal else "MISS"
