"""Fused linear + cross-entropy with per-token log-probs, in Triton.

The full (tokens x vocab) logits never exist: rows are processed in chunks, so at most (chunk x vocab)
logits live at a time (the idea of Liger-Kernel's fused linear CE; chunk chosen so a chunk of logits is
about the size of the hidden states).
  forward:  per chunk, logits = h W^T (a matmul), then a Triton program per row runs an online
            log-sum-exp over vocab blocks: loss = lse - logit[target]; the LSE is saved (N floats).
  backward: per chunk, recompute the logits, a Triton program per row overwrites them in place with
            dlogits = (softmax - onehot(target)) * grad_loss[row], then dh = dlogits W and dW += dlogits^T h.
Per-token outputs (not a mean) because GRPO weights every token by its own advantage; -loss is the
target's log-prob, so GRPO's ratio and KL use this same kernel. Ignored rows (prompt, padding: often most of
a GRPO batch) are dropped before the GEMMs and give 0 loss and 0 gradient; dW accumulates in fp32.
Mixed precision: under autocast the GEMMs run in bf16 on bf16 copies of h and W that the backward reuses, so
the recomputed logits match the saved LSE wherever .backward() is called (see _FusedLinearCrossEntropy).

Where it sits among the public designs (ideas only; no code taken):
  - Liger-Kernel's fused linear CE: the same chunking over rows with the logits of a chunk materialised
    (GEMM by cuBLAS, softmax and its gradient by a Triton row kernel); Liger computes the chunk's gradients in
    the forward and keeps them, we recompute the chunk's logits in the backward (one more GEMM, but the forward
    of GRPO's no-grad passes pays nothing for gradients, and no N x D / V x D gradient waits in memory).
  - Apple's Cut Cross-Entropy: no logits in global memory at all; the GEMM and the log-sum-exp are one kernel
    that keeps logit tiles on chip and writes only the target logit and the LSE (memory O(N)); the backward
    skips vocabulary blocks whose softmax is negligible. Faster and leaner at large V, and a much harder
    kernel to read: here the GEMM stays a matmul call, the lesson is the online LSE and the chunking.
  - Chunk size (chunk_rows): Liger's rule (a chunk of logits about as large as the hidden states), capped on
    the GPU so a chunk's logits fit in a fraction of the free memory.

Reference: kernels/reference.py::linear_cross_entropy. Tests: tests/test_kernels.py.
"""
import os

import torch
import triton
import triton.language as tl

from nanor1.device import compute_dtype

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _ce_fwd(Logits, Targets, Loss, LSE, s_row, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(Targets + row)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane running max and sum (online LSE)
    s = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(Logits + row * s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    m_row = tl.max(m, 0)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))
    ignored = target == ignore_index
    safe_target = tl.where(ignored, 0, target)
    x_target = tl.load(Logits + row * s_row + safe_target).to(tl.float32)
    tl.store(Loss + row, tl.where(ignored, 0.0, lse - x_target))
    tl.store(LSE + row, lse)


@triton.jit
def _ce_bwd(Logits, Targets, LSE, GradLoss, s_row, V, ignore_index, BLOCK_V: tl.constexpr):
    """In place: logits[row] <- (softmax(logits[row]) - onehot(target)) * grad_loss[row]."""
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(Targets + row)
    lse = tl.load(LSE + row)
    g = tl.load(GradLoss + row)
    g = tl.where(target == ignore_index, 0.0, g)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(Logits + row * s_row + cols, mask=cols < V, other=0.0).to(tl.float32)
        d = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        tl.store(Logits + row * s_row + cols, (d * g).to(Logits.dtype.element_ty), mask=cols < V)


def _block_v(V):
    return min(1024 if _INTERPRET else 4096, triton.next_power_of_2(V))


def chunk_rows(N, V, D, free_bytes=None, logit_bytes=4):
    """Rows per chunk, a power of 2: logits of a chunk about as large as the hidden states (Liger's rule), and,
    when free_bytes (free device memory) is known, no more than 1/8 of it for a chunk's logits of logit_bytes
    each (the fp32 fallback of the dW accumulation holds one more copy of them)."""
    rows = min(triton.next_power_of_2(max(N, 1)), max(16, triton.next_power_of_2(triton.cdiv(N, triton.cdiv(V, D)))))
    if free_bytes is not None:
        while rows > 16 and rows * V * logit_bytes > free_bytes // 8:
            rows //= 2
    return rows


def _free_bytes(device):
    """Free memory of a CUDA device (None elsewhere: the chunking then follows Liger's rule alone)."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


_fp32_out_matmul = {"ok": None}  # does this build accumulate a bf16 matmul straight into fp32 (addmm out_dtype)?


def _accumulate_fp32(acc, a, b):
    """acc (fp32) += a @ b without rounding the product to a's dtype and without a temporary copy of acc's size.
    CUDA builds of torch >= 2.8 have addmm with out_dtype (bf16 inputs, fp32 output, one GEMM); elsewhere the
    inputs are upcast and the GEMM runs in fp32 (same numbers, slower)."""
    if a.dtype != torch.float32 and a.is_cuda and _fp32_out_matmul["ok"] is not False:
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            _fp32_out_matmul["ok"] = True
            return acc
        except (TypeError, RuntimeError, NotImplementedError):
            _fp32_out_matmul["ok"] = False
    return acc.addmm_(a.float(), b.float())


def _check_targets(targets, V, ignore_index):
    """Targets must be class ids in [0, V) or ignore_index: a GPU kernel would read out of bounds otherwise."""
    real = targets[targets != ignore_index]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= V):
        bad = real[(real < 0) | (real >= V)][0].item()
        raise ValueError(f"fused_linear_cross_entropy: target {bad} is outside [0, {V}) and is not "
                         f"ignore_index={ignore_index}")


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Mixed precision: the matmuls run in the dtype autocast gives them at forward time (bf16 on the GPU), and the
    backward recomputes the logits from the SAME low-precision copies of hidden and weight that the forward saved,
    so exp(logit - lse) sums to 1 whether .backward() is called inside autocast or not. Only the rows whose target
    is not ignored (GRPO: the response tokens; SFT: not the prompt, not the padding) enter the GEMMs."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk):
        N, D = hidden.shape
        V = weight.shape[0]
        if weight.shape[1] != D or targets.shape != (N,):
            raise ValueError(f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)}, weight "
                             f"{tuple(weight.shape)}, targets {tuple(targets.shape)} do not fit (N,D) (V,D) (N,)")
        _check_targets(targets, V, ignore_index)
        dtype = compute_dtype(hidden.device.type, torch.promote_types(hidden.dtype, weight.dtype))
        rows = (targets != ignore_index).nonzero()[:, 0]  # (n,) the rows that have a loss
        h = hidden.index_select(0, rows).to(dtype).contiguous()  # (n, D), compute dtype
        w = weight.to(dtype)  # (V, D); under autocast a bf16 copy, saved so the backward sees the same numbers
        t = targets.index_select(0, rows).contiguous()
        loss = torch.zeros(N, dtype=torch.float32, device=hidden.device)
        loss_rows = torch.empty(rows.numel(), dtype=torch.float32, device=hidden.device)
        lse = torch.empty(rows.numel(), dtype=torch.float32, device=hidden.device)
        chunk = chunk or chunk_rows(rows.numel(), V, D, _free_bytes(hidden.device), 4)
        with torch.autocast(hidden.device.type, enabled=False):
            for r0 in range(0, rows.numel(), chunk):
                part = slice(r0, min(r0 + chunk, rows.numel()))
                logits = h[part] @ w.t()  # (chunk, V), the only logits that exist at a time
                _ce_fwd[(logits.shape[0],)](logits, t[part], loss_rows[part], lse[part], logits.stride(0), V,
                                            ignore_index, BLOCK_V=_block_v(V))
        loss.index_copy_(0, rows, loss_rows)
        ctx.save_for_backward(h, w, t, lse, rows)
        ctx.ignore_index, ctx.chunk = ignore_index, chunk
        ctx.hidden_shape, ctx.hidden_dtype, ctx.weight_dtype = hidden.shape, hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        h, w, t, lse, rows = ctx.saved_tensors
        n, V = h.shape[0], w.shape[0]
        g = grad_loss.float().index_select(0, rows).contiguous()  # (n,)
        d_hidden = torch.zeros(ctx.hidden_shape, dtype=ctx.hidden_dtype, device=h.device) \
            if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
        with torch.autocast(h.device.type, enabled=False):
            for r0 in range(0, n, ctx.chunk):
                part = slice(r0, min(r0 + ctx.chunk, n))
                logits = h[part] @ w.t()  # recomputed from the forward's own copies, rather than stored
                _ce_bwd[(logits.shape[0],)](logits, t[part], lse[part], g[part], logits.stride(0), V,
                                            ctx.ignore_index, BLOCK_V=_block_v(V))  # logits <- dlogits in place
                if d_hidden is not None:
                    d_hidden.index_copy_(0, rows[part], (logits @ w).to(ctx.hidden_dtype))
                if d_weight is not None:
                    _accumulate_fp32(d_weight, logits.t(), h[part])  # dW += dlogits^T h, in fp32
        return d_hidden, (d_weight.to(ctx.weight_dtype) if d_weight is not None else None), None, None, None


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index=-100, chunk=None):
    """Same contract as reference.linear_cross_entropy: (N, D), (V, D), (N,) -> per-token loss (N,) fp32."""
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk)
