"""Causal flash attention for MLA shapes, forward and backward, in Triton.

FlashAttention-2 (Dao 2023) structure, as in Triton's fused-attention tutorial:
  forward:  one program per (query block, batch*head); loop over key blocks with an online softmax in
            base 2 (m = running max, l = running sum); save LSE = m + log2(l) per row. No T x T matrix.
  backward: Delta = rowsum(O * dO) (preprocess); one program per key block accumulates dK and dV over the
            query blocks that see it; one program per query block accumulates dQ. No atomics. Two launches
            recompute QK^T and dO V^T once each (FA2's single-launch backward needs atomics on dQ); which is
            faster for MLA's dims on an H100 is still to be measured (docs/bench_kernels_*.md).
  masking:  each loop runs in two stages, as the tutorial does: blocks wholly on one side of the diagonal
            with no causal mask, then the few diagonal blocks with it (the `CAUSAL` constexpr of the inner
            loops); left padding adds a mask only when a batch has some (`HAS_START`).
MLA specifics (DeepSeek-V2 eqs. 44-46): the score is q_nope.k_nope + q_rope.k_rope, so the two parts are
two dots (each padded to a power of two); k_rope is one vector per token shared by all heads (loaded with
no head stride; its gradient is summed over heads afterwards); the value dim differs from the key dim.
Left padding: keys before start[b] are masked; a query row with no key left outputs 0.

Reference: kernels/reference.py::mla_attention. Tests: tests/test_kernels.py.
"""
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------------- shared pieces

@triton.jit
def _tile(base, rows, row_stride, cols, T, D, UPCAST: tl.constexpr):
    """Rows `rows` (< T) and columns `cols` (< D) of a (T, D) matrix at `base` whose rows are row_stride apart,
    zeros outside: (len(rows), len(cols)). UPCAST: fp32, for the interpreter (its bf16 dot is wrong)."""
    x = tl.load(base + rows[:, None] * row_stride + cols[None, :],
                mask=(rows[:, None] < T) & (cols[None, :] < D), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _scores(qn, qr, kn, kr, PRECISION: tl.constexpr):
    """MLA's score q_nope.k_nope + q_rope.k_rope (V2 eq. 46), the rope dot chained onto the nope one's
    accumulator. q: (M, d) tiles, k: (N, d) tiles -> (M, N) fp32."""
    s = tl.dot(qn, tl.trans(kn), input_precision=PRECISION)
    return tl.dot(qr, tl.trans(kr), acc=s, input_precision=PRECISION)


@triton.jit
def _mask(x, offs_m, offs_n, start, T, fill, CAUSAL: tl.constexpr, HAS_START: tl.constexpr):
    """Set what a query may not see to `fill`: keys after it and past the end (only in CAUSAL, the diagonal
    blocks: every other block lies wholly before its queries) and left padding (HAS_START)."""
    if CAUSAL:
        x = tl.where((offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < T), x, fill)
    if HAS_START:
        x = tl.where(offs_n[None, :] >= start, x, fill)
    return x


# ------------------------------------------------------------------------------------------- forward

@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, qn, qr, kn_base, kr_base, v_base, s_kn_t, s_kr_t, s_v_t,
                    offs_m, start, lo, hi, T, qk_scale,
                    DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
                    BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_START: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr):
    """The online softmax (FlashAttention-2 alg. 1) over key blocks lo..hi, in base 2."""
    dn, dr, dv = tl.arange(0, BDN), tl.arange(0, BDR), tl.arange(0, BDV)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kn = _tile(kn_base, offs_n, s_kn_t, dn, T, DN, UPCAST)  # (BLOCK_N, BDN)
        kr = _tile(kr_base, offs_n, s_kr_t, dr, T, DR, UPCAST)  # (BLOCK_N, BDR), shared by the heads
        v = _tile(v_base, offs_n, s_v_t, dv, T, DV, UPCAST)  # (BLOCK_N, BDV)
        s = _scores(qn, qr, kn, kr, PRECISION) * qk_scale  # scores in base-2 units
        s = _mask(s, offs_m, offs_n, start, T, float("-inf"), CAUSAL, HAS_START)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing kept yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Qn, Qr, Kn, Kr, V, O, LSE, Start,
              s_qn_b, s_qn_h, s_qn_t, s_qr_b, s_qr_h, s_qr_t, s_kn_b, s_kn_h, s_kn_t, s_kr_b, s_kr_t,
              s_v_b, s_v_h, s_v_t, s_o_b, s_o_h, s_o_t,
              H, T, qk_scale,
              DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
              BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HAS_START: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """O and LSE of one query block: key blocks wholly before it unmasked, then the diagonal ones masked."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dn, dr, dv = tl.arange(0, BDN), tl.arange(0, BDR), tl.arange(0, BDV)
    row_ok = offs_m < T
    qn = _tile(Qn + b * s_qn_b + h * s_qn_h, offs_m, s_qn_t, dn, T, DN, UPCAST)  # (BLOCK_M, BDN)
    qr = _tile(Qr + b * s_qr_b + h * s_qr_h, offs_m, s_qr_t, dr, T, DR, UPCAST)  # (BLOCK_M, BDR)
    if HAS_START:
        start = tl.load(Start + b).to(tl.int32)
    else:
        start = 0
    lo = (start // BLOCK_N) * BLOCK_N  # key blocks wholly in the padding are skipped
    diag = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N  # key blocks from here on reach past the first query
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)  # causal: nothing past the block's last query

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BDV], tl.float32)
    kn_base, kr_base, v_base = Kn + b * s_kn_b + h * s_kn_h, Kr + b * s_kr_b, V + b * s_v_b + h * s_v_h
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, qn, qr, kn_base, kr_base, v_base, s_kn_t, s_kr_t, s_v_t,
                                    offs_m, start, lo, diag, T, qk_scale, DN, DR, DV, BDN, BDR, BDV, BLOCK_N,
                                    False, HAS_START, UPCAST, PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, qn, qr, kn_base, kr_base, v_base, s_kn_t, s_kr_t, s_v_t,
                                    offs_m, start, tl.maximum(lo, diag), hi, T, qk_scale, DN, DR, DV,
                                    BDN, BDR, BDV, BLOCK_N, True, HAS_START, UPCAST, PRECISION)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + b * s_o_b + h * s_o_h + offs_m[:, None] * s_o_t + dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (dv[None, :] < DV))
    lse = tl.where(empty, 0.0, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.math.log2(l_safe))
    tl.store(LSE + pid_bh * T + offs_m, lse, mask=row_ok)


# ------------------------------------------------------------------------------------------ backward

@triton.jit
def _probs_and_dscores(qn, qr, kn, kr, v, do, lse, delta, offs_m, offs_n, start, T, qk_scale,
                       CAUSAL: tl.constexpr, HAS_START: tl.constexpr, PRECISION: tl.constexpr):
    """What both backward loops recompute for a (query block, key block) tile: P = exp2(S - LSE) (masked), and
    dS = P * (dP - Delta) with dP = dO V^T and Delta = rowsum(dO * O) (FlashAttention-2 alg. 2).
    -> p, ds, both (BLOCK_M, BLOCK_N) fp32."""
    s = _scores(qn, qr, kn, kr, PRECISION) * qk_scale
    p = _mask(tl.math.exp2(s - lse[:, None]), offs_m, offs_n, start, T, 0.0, CAUSAL, HAS_START)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    return p, p * (dp - delta[:, None])


@triton.jit
def _attn_bwd_kv_inner(dkn, dkr, dvv, kn, kr, v, qn_base, qr_base, do_base, s_qn_t, s_qr_t, s_do_t,
                       LSE_row, Delta_row, offs_n, start, lo, hi, T, qk_scale,
                       DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
                       BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr, BLOCK_M: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_START: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr):
    """dK, dV contributions of query blocks lo..hi. Rows past T load q = dO = 0 and contribute nothing."""
    dn, dr, dv = tl.arange(0, BDN), tl.arange(0, BDR), tl.arange(0, BDV)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        qn = _tile(qn_base, offs_m, s_qn_t, dn, T, DN, UPCAST)
        qr = _tile(qr_base, offs_m, s_qr_t, dr, T, DR, UPCAST)
        do = _tile(do_base, offs_m, s_do_t, dv, T, DV, UPCAST)
        lse = tl.load(LSE_row + offs_m, mask=offs_m < T, other=0.0)
        delta = tl.load(Delta_row + offs_m, mask=offs_m < T, other=0.0)
        p, ds = _probs_and_dscores(qn, qr, kn, kr, v, do, lse, delta, offs_m, offs_n, start, T, qk_scale,
                                   CAUSAL, HAS_START, PRECISION)
        dvv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
        dkn += tl.dot(tl.trans(ds).to(qn.dtype), qn, input_precision=PRECISION)
        dkr += tl.dot(tl.trans(ds).to(qr.dtype), qr, input_precision=PRECISION)
    return dkn, dkr, dvv


@triton.jit
def _attn_bwd_kv(Qn, Qr, Kn, Kr, V, dO, LSE, Delta, Start, dKn, dKr, dV,
                 s_qn_b, s_qn_h, s_qn_t, s_qr_b, s_qr_h, s_qr_t, s_kn_b, s_kn_h, s_kn_t, s_kr_b, s_kr_t,
                 s_v_b, s_v_h, s_v_t, s_do_b, s_do_h, s_do_t,
                 H, T, qk_scale, sm_scale,
                 DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
                 BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_START: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV of one key block: sum over the query blocks at or after it, the diagonal ones masked.
    dKr is per head (B, H, T, DR)."""
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dn, dr, dv = tl.arange(0, BDN), tl.arange(0, BDR), tl.arange(0, BDV)
    col_ok = offs_n < T
    kn = _tile(Kn + b * s_kn_b + h * s_kn_h, offs_n, s_kn_t, dn, T, DN, UPCAST)  # (BLOCK_N, BDN)
    kr = _tile(Kr + b * s_kr_b, offs_n, s_kr_t, dr, T, DR, UPCAST)  # (BLOCK_N, BDR)
    v = _tile(V + b * s_v_b + h * s_v_h, offs_n, s_v_t, dv, T, DV, UPCAST)  # (BLOCK_N, BDV)
    if HAS_START:
        start = tl.load(Start + b).to(tl.int32)
    else:
        start = 0
    dkn = tl.zeros([BLOCK_N, BDN], tl.float32)
    dkr = tl.zeros([BLOCK_N, BDR], tl.float32)
    dvv = tl.zeros([BLOCK_N, BDV], tl.float32)
    lo = ((pid_n * BLOCK_N) // BLOCK_M) * BLOCK_M  # earlier queries cannot see these keys
    diag_end = tl.cdiv((pid_n + 1) * BLOCK_N, BLOCK_M) * BLOCK_M  # later query blocks see the whole block
    qn_base, qr_base = Qn + b * s_qn_b + h * s_qn_h, Qr + b * s_qr_b + h * s_qr_h
    do_base, lse_row, delta_row = dO + b * s_do_b + h * s_do_h, LSE + pid_bh * T, Delta + pid_bh * T
    dkn, dkr, dvv = _attn_bwd_kv_inner(dkn, dkr, dvv, kn, kr, v, qn_base, qr_base, do_base, s_qn_t, s_qr_t, s_do_t,
                                       lse_row, delta_row, offs_n, start, lo, tl.minimum(diag_end, T), T, qk_scale,
                                       DN, DR, DV, BDN, BDR, BDV, BLOCK_M, True, HAS_START, UPCAST, PRECISION)
    dkn, dkr, dvv = _attn_bwd_kv_inner(dkn, dkr, dvv, kn, kr, v, qn_base, qr_base, do_base, s_qn_t, s_qr_t, s_do_t,
                                       lse_row, delta_row, offs_n, start, diag_end, T, T, qk_scale,
                                       DN, DR, DV, BDN, BDR, BDV, BLOCK_M, False, HAS_START, UPCAST, PRECISION)
    base = b * H * T + h * T  # dKn, dKr, dV are contiguous (B, H, T, d)
    tl.store(dKn + (base + offs_n[:, None]) * DN + dn[None, :], (dkn * sm_scale).to(dKn.dtype.element_ty),
             mask=col_ok[:, None] & (dn[None, :] < DN))
    tl.store(dKr + (base + offs_n[:, None]) * DR + dr[None, :], dkr * sm_scale,
             mask=col_ok[:, None] & (dr[None, :] < DR))
    tl.store(dV + (base + offs_n[:, None]) * DV + dv[None, :], dvv.to(dV.dtype.element_ty),
             mask=col_ok[:, None] & (dv[None, :] < DV))


@triton.jit
def _attn_bwd_q_inner(dqn, dqr, qn, qr, do, lse, delta, kn_base, kr_base, v_base, s_kn_t, s_kr_t, s_v_t,
                      offs_m, start, lo, hi, T, qk_scale,
                      DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
                      BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, HAS_START: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr):
    """dQ contributions of key blocks lo..hi."""
    dn, dr, dv = tl.arange(0, BDN), tl.arange(0, BDR), tl.arange(0, BDV)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kn = _tile(kn_base, offs_n, s_kn_t, dn, T, DN, UPCAST)
        kr = _tile(kr_base, offs_n, s_kr_t, dr, T, DR, UPCAST)
        v = _tile(v_base, offs_n, s_v_t, dv, T, DV, UPCAST)
        _, ds = _probs_and_dscores(qn, qr, kn, kr, v, do, lse, delta, offs_m, offs_n, start, T, qk_scale,
                                   CAUSAL, HAS_START, PRECISION)
        dqn += tl.dot(ds.to(kn.dtype), kn, input_precision=PRECISION)
        dqr += tl.dot(ds.to(kr.dtype), kr, input_precision=PRECISION)
    return dqn, dqr


@triton.jit
def _attn_bwd_q(Qn, Qr, Kn, Kr, V, dO, LSE, Delta, Start, dQn, dQr,
                s_qn_b, s_qn_h, s_qn_t, s_qr_b, s_qr_h, s_qr_t, s_kn_b, s_kn_h, s_kn_t, s_kr_b, s_kr_t,
                s_v_b, s_v_h, s_v_t, s_do_b, s_do_h, s_do_t,
                H, T, qk_scale, sm_scale,
                DN: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
                BDN: tl.constexpr, BDR: tl.constexpr, BDV: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_START: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query block: sum over the key blocks it sees, the diagonal ones masked."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dn, dr, dv = tl.arange(0, BDN), tl.arange(0, BDR), tl.arange(0, BDV)
    row_ok = offs_m < T
    qn = _tile(Qn + b * s_qn_b + h * s_qn_h, offs_m, s_qn_t, dn, T, DN, UPCAST)
    qr = _tile(Qr + b * s_qr_b + h * s_qr_h, offs_m, s_qr_t, dr, T, DR, UPCAST)
    do = _tile(dO + b * s_do_b + h * s_do_h, offs_m, s_do_t, dv, T, DV, UPCAST)
    lse = tl.load(LSE + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(Delta + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    if HAS_START:
        start = tl.load(Start + b).to(tl.int32)
    else:
        start = 0
    dqn = tl.zeros([BLOCK_M, BDN], tl.float32)
    dqr = tl.zeros([BLOCK_M, BDR], tl.float32)
    lo = (start // BLOCK_N) * BLOCK_N
    diag = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    kn_base, kr_base, v_base = Kn + b * s_kn_b + h * s_kn_h, Kr + b * s_kr_b, V + b * s_v_b + h * s_v_h
    dqn, dqr = _attn_bwd_q_inner(dqn, dqr, qn, qr, do, lse, delta, kn_base, kr_base, v_base, s_kn_t, s_kr_t, s_v_t,
                                 offs_m, start, lo, diag, T, qk_scale,
                                 DN, DR, DV, BDN, BDR, BDV, BLOCK_N, False, HAS_START, UPCAST, PRECISION)
    dqn, dqr = _attn_bwd_q_inner(dqn, dqr, qn, qr, do, lse, delta, kn_base, kr_base, v_base, s_kn_t, s_kr_t, s_v_t,
                                 offs_m, start, tl.maximum(lo, diag), hi, T, qk_scale,
                                 DN, DR, DV, BDN, BDR, BDV, BLOCK_N, True, HAS_START, UPCAST, PRECISION)
    base = b * H * T + h * T
    tl.store(dQn + (base + offs_m[:, None]) * DN + dn[None, :], (dqn * sm_scale).to(dQn.dtype.element_ty),
             mask=row_ok[:, None] & (dn[None, :] < DN))
    tl.store(dQr + (base + offs_m[:, None]) * DR + dr[None, :], (dqr * sm_scale).to(dQr.dtype.element_ty),
             mask=row_ok[:, None] & (dr[None, :] < DR))


def _pow2(d):
    return max(16, triton.next_power_of_2(d))


def block_config(dn, dr, dv, dtype):
    """Block sizes, warps and stages. Untuned defaults (no GPU was available to tune them; see docs/)."""
    if _INTERPRET:
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    big = _pow2(dn) + _pow2(dr) + _pow2(dv) > 256 or dtype == torch.float32
    return dict(BLOCK_M=64, BLOCK_N=32 if big else 64, num_warps=4, num_stages=2 if big else 3)


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class _FlashMLAAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_nope, q_rope, k_nope, k_rope, v, scale, start):
        q_nope, q_rope, k_nope, k_rope, v = map(_last_dim_contiguous, (q_nope, q_rope, k_nope, k_rope, v))
        B, H, T, DN = q_nope.shape
        DR, DV = q_rope.shape[-1], v.shape[-1]
        if k_rope.shape != (B, T, DR) or v.shape[:3] != (B, H, T) or k_nope.shape != q_nope.shape:
            raise ValueError(f"flash_mla_attention: shapes q_nope {tuple(q_nope.shape)}, q_rope "
                             f"{tuple(q_rope.shape)}, k_nope {tuple(k_nope.shape)}, k_rope {tuple(k_rope.shape)}, "
                             f"v {tuple(v.shape)} do not fit (B,H,T,dn) (B,H,T,dr) (B,H,T,dn) (B,T,dr) (B,H,T,dv)")
        dtypes = [t.dtype for t in (q_nope, q_rope, k_nope, k_rope, v)]
        if len(set(dtypes)) > 1:  # the compiled kernel's dots need one dtype (the interpreter's upcast hides it)
            raise ValueError("flash_mla_attention: q_nope, q_rope, k_nope, k_rope, v must share one dtype, got "
                             + ", ".join(str(d).replace("torch.", "") for d in dtypes))
        cfg = block_config(DN, DR, DV, q_nope.dtype)
        has_start = start is not None
        start_t = start.to(device=q_nope.device, dtype=torch.int32).contiguous() if has_start else \
            torch.zeros(1, dtype=torch.int32, device=q_nope.device)
        o = torch.empty(B, H, T, DV, dtype=v.dtype, device=v.device)
        lse = torch.empty(B * H, T, dtype=torch.float32, device=v.device)
        precision = "ieee" if q_nope.dtype == torch.float32 else "tf32"
        grid = (triton.cdiv(T, cfg["BLOCK_M"]), B * H)
        _attn_fwd[grid](q_nope, q_rope, k_nope, k_rope, v, o, lse, start_t,
                        *q_nope.stride()[:3], *q_rope.stride()[:3], *k_nope.stride()[:3], *k_rope.stride()[:2],
                        *v.stride()[:3], *o.stride()[:3],
                        H, T, scale * LOG2E,
                        DN=DN, DR=DR, DV=DV, BDN=_pow2(DN), BDR=_pow2(DR), BDV=_pow2(DV),
                        HAS_START=has_start, UPCAST=_INTERPRET, PRECISION=precision, **cfg)
        ctx.save_for_backward(q_nope, q_rope, k_nope, k_rope, v, o, lse, start_t)
        ctx.scale, ctx.has_start, ctx.cfg, ctx.precision = scale, has_start, cfg, precision
        return o

    @staticmethod
    def backward(ctx, do):
        q_nope, q_rope, k_nope, k_rope, v, o, lse, start_t = ctx.saved_tensors
        do = _last_dim_contiguous(do)
        B, H, T, DN = q_nope.shape
        DR, DV = q_rope.shape[-1], v.shape[-1]
        cfg = ctx.cfg
        delta = (o.float() * do.float()).sum(-1).reshape(B * H, T).contiguous()  # preprocess: rowsum(O * dO)
        dq_nope = torch.empty(B, H, T, DN, dtype=q_nope.dtype, device=q_nope.device)
        dq_rope = torch.empty(B, H, T, DR, dtype=q_rope.dtype, device=q_rope.device)
        dk_nope = torch.empty(B, H, T, DN, dtype=k_nope.dtype, device=k_nope.device)
        dk_rope_heads = torch.empty(B, H, T, DR, dtype=torch.float32, device=k_rope.device)
        dv = torch.empty(B, H, T, DV, dtype=v.dtype, device=v.device)
        common = dict(DN=DN, DR=DR, DV=DV, BDN=_pow2(DN), BDR=_pow2(DR), BDV=_pow2(DV),
                      HAS_START=ctx.has_start, UPCAST=_INTERPRET, PRECISION=ctx.precision, **cfg)
        strides = (*q_nope.stride()[:3], *q_rope.stride()[:3], *k_nope.stride()[:3], *k_rope.stride()[:2],
                   *v.stride()[:3], *do.stride()[:3])
        _attn_bwd_kv[(triton.cdiv(T, cfg["BLOCK_N"]), B * H)](
            q_nope, q_rope, k_nope, k_rope, v, do, lse, delta, start_t, dk_nope, dk_rope_heads, dv,
            *strides, H, T, ctx.scale * LOG2E, ctx.scale, **common)
        _attn_bwd_q[(triton.cdiv(T, cfg["BLOCK_M"]), B * H)](
            q_nope, q_rope, k_nope, k_rope, v, do, lse, delta, start_t, dq_nope, dq_rope,
            *strides, H, T, ctx.scale * LOG2E, ctx.scale, **common)
        dk_rope = dk_rope_heads.sum(1).to(k_rope.dtype)  # the shared rope key: gradient summed over heads
        return dq_nope, dq_rope, dk_nope, dk_rope, dv, None, None


def flash_mla_attention(q_nope, q_rope, k_nope, k_rope, v, scale, start=None):
    """Same contract as reference.mla_attention: (B,H,T,dn) (B,H,T,dr) (B,H,T,dn) (B,T,dr) (B,H,T,dv) -> (B,H,T,dv)."""
    return _FlashMLAAttention.apply(q_nope, q_rope, k_nope, k_rope, v, scale, start)
