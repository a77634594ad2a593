"""Benchmarks: scripts that print tables (never timed assertions). Shared helpers below."""
import time

import torch


def timer_ms(fn, reps):
    """Mean milliseconds per call after one warm-up call (CUDA events on the GPU, wall clock elsewhere)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1000 / reps


def peak_mib(fn):
    """Peak memory above what was allocated before the call, in MiB (CUDA only; None elsewhere)."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def attention_flops(B, H, T, dqk, dv, backward):
    """Useful causal work: 2 * (T^2 / 2) * (dqk + dv) per head for the forward; the backward ~2.5x that."""
    fwd = 2 * B * H * T * T / 2 * (dqk + dv)
    return fwd * (3.5 if backward else 1.0)
