"""Where a run computes and in what precision: one switch, `device` and `dtype`, shared by every loop (SFT, GRPO,
rejection sampling, the sampler in sample.py).

    device: 'auto' (cuda, else mps, else cpu) or a torch device name
    dtype:  'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'bf16' (autocast on any device, the CPU included),
            'fp32' (no autocast)

Mixed precision as the GPU runs it (Micikevicius et al. 2018, "Mixed Precision Training"): parameters, optimizer
state and gradients stay fp32; under torch.autocast the matmuls run in bf16 and reductions (norms, softmax,
losses) in fp32. `dtype=bf16` on the CPU runs that same arithmetic pattern, which is how the tests prove the GPU
path without a GPU.
"""
import contextlib

import torch

DTYPES = ("auto", "bf16", "fp32")


def pick_device(name="auto"):
    """'auto' -> cuda if present, else Apple's mps, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_dtype(device, dtype="auto"):
    """-> 'bf16' or 'fp32': what dtype='auto' means on this device."""
    if dtype not in DTYPES:
        raise ValueError(f"config key 'dtype' must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return dtype


def autocast(device, dtype="auto"):
    """The context every forward of a run executes in: bf16 autocast, or nothing for fp32."""
    device = torch.device(device)
    if resolve_dtype(device, dtype) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compute_dtype(device_type, fallback):
    """The dtype matmuls run in right now: the autocast dtype where autocast is on, else `fallback`."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return fallback
