"""The sampler used by evaluation, rejection sampling and GRPO.

    generate(model, prompts, max_new_tokens, n=..., temperature=..., top_k=..., top_p=..., stop_ids=..., seed=...)

Ragged prompts are left-padded into one batch (row b's real tokens start at start[b]; attention masks the
padding and RoPE positions count from start[b]). The prompt is prefilled once into MLA's latent cache, then
fanned out to n samples per prompt (best-of-N, GRPO groups). Each step feeds one token per row through the
absorbed decoding path; a row stops on its own at a stop id (its stop token is kept) or at max_new_tokens.
Once a quarter of the batch has stopped, those rows leave the batch (and the cache), so a few long answers
do not keep the short ones' compute busy.

speculative=True: MTP self-speculative decoding (DeepSeek-V3 sec. 5.4.3). The MTP module drafts the token
after next; one forward of the main model on [next, draft] verifies it and, when accepted, also yields the
token after the draft: up to two tokens per forward. Drafts are accepted by the speculative sampling rule
(Leviathan et al. 2023; Chen et al. 2023), which keeps the main model's distribution exactly; greedy
decoding gives the same tokens as plain greedy decoding.
"""
import dataclasses
import functools

import torch

from nanor1.model import GPT, KVCache


@dataclasses.dataclass
class Generation:
    tokens: list  # list of lists of response ids, row i = prompt i // n, sample i % n; stop token included
    finished: list  # True where the row stopped on a stop id (False: cut at max_new_tokens, "truncated")
    acceptance: float | None = None  # speculative decoding: share of drafts accepted


def left_pad(prompts, pad_id, device):
    """list of id lists -> (B, L) ids, start (B,): row b's first real position."""
    L = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), L), pad_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        idx[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
    start = torch.tensor([L - len(p) for p in prompts], dtype=torch.long, device=device)
    return idx, start


def filtered_probs(logits, temperature, top_k, top_p):
    """The distribution that sampling draws from: softmax(logits / temperature), cut to the top_k tokens and
    to the nucleus of mass top_p (Holtzman et al. 2020), renormalised. logits (B, V) -> probs (B, V) fp32."""
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep a token if the mass before it is < top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits.softmax(-1)


def sample_next(logits, temperature, top_k, top_p, generator, noise=None):
    """logits (B, V) -> next ids (B,). temperature 0 is greedy; top_k 0 and top_p 1 turn those filters off.
    Sampling is the exponential race (the Gumbel-max trick in another form): with e_v ~ Exp(1) independent,
    argmax_v p_v / e_v is v with probability p_v. noise: (B, V) the e_v (drawn from generator when None); the
    samplers draw it for every output row, so a row's sample does not depend on which rows share its batch."""
    if temperature == 0:
        return logits.argmax(-1)
    if noise is None:
        noise = torch.empty_like(logits, dtype=torch.float32).exponential_(generator=generator)
    return (filtered_probs(logits, temperature, top_k, top_p) / noise.clamp(min=1e-30)).argmax(-1)


def accept_draft(p, q, draft, generator):
    """Speculative sampling's rule: a draft ~ q is kept with probability min(1, p(draft) / q(draft)); a
    rejected one is replaced by a sample of max(0, p - q), renormalised. The result is distributed as p.
    p, q: (B, V) probabilities; draft: (B,) -> accepted (B,) bool, replacement (B,) ids."""
    p_draft, q_draft = p.gather(1, draft[:, None])[:, 0], q.gather(1, draft[:, None])[:, 0]
    u = torch.rand(p.size(0), device=p.device, generator=generator)
    accepted = u * q_draft < p_draft
    residual = (p - q).clamp(min=0)
    total = residual.sum(-1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp(min=1e-30), p)  # p == q: any sample of p will do
    return accepted, torch.multinomial(residual, 1, generator=generator)[:, 0]


def _setup(model, prompts, max_new_tokens, pad_id, seed):
    """Shared by both generators: left-pad, check the length, make the seeded generator."""
    device = next(model.parameters()).device
    idx, start = left_pad(prompts, pad_id, device)
    if idx.size(1) + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt length {idx.size(1)} + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"max_seq_len={model.cfg.max_seq_len}")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    return idx, start, generator, next(model.parameters()).dtype


DECODE_MODES = ("eager", "static", "compiled")
_compiled_steps = {}  # device type -> GPT.decode_step under torch.compile (compiled once per process)


def static_step(model, decode):
    """The fixed-shape step GPT.decode_step as it is ('static') or under torch.compile ('compiled'; dynamic
    batch size, so the powers of two the batch shrinks to share one compilation)."""
    if decode == "static":
        return model.decode_step
    device_type = next(model.parameters()).device.type
    if device_type not in _compiled_steps:
        _compiled_steps[device_type] = torch.compile(GPT.decode_step, dynamic=True)
    return functools.partial(_compiled_steps[device_type], model)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, n=1, temperature=1.0, top_k=0, top_p=1.0, stop_ids=(), pad_id=0,
             seed=None, use_cache=True, speculative=False, decode="eager"):
    """Sample n continuations of each prompt (lists of token ids). -> Generation with len(prompts) * n rows.
    decode: how each step runs (all give the same tokens for the same seed):
      'eager'    the readable reference: each step slices the cache up to the current slot, and rows that
                 have stopped leave the batch once they are a quarter of it;
      'static'   fixed shapes: GPT.decode_step reads the whole preallocated cache (no side effects, no host
                 sync), the batch shrinking only to powers of two (stopped rows fill the rest);
      'compiled' the static step under torch.compile (CPU and GPU)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if speculative:
        if not model.cfg.mtp_depth:
            raise ValueError("speculative decoding needs a model with mtp_depth >= 1")
        return _generate_speculative(model, prompts, max_new_tokens, n, temperature, top_k, top_p, stop_ids,
                                     pad_id, seed)
    static = decode != "eager"
    if static and not use_cache:
        raise ValueError(f"decode={decode!r} needs use_cache=True")
    idx, start, generator, dtype = _setup(model, prompts, max_new_tokens, pad_id, seed)
    device, (B, L) = idx.device, idx.shape
    was_training = model.training
    model.eval()
    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)

    logits = cache = None
    if use_cache:  # prefill each prompt once, then fan the cache out to its n samples
        cache = KVCache(model.cfg, B, L + max_new_tokens, device, dtype, start=start)
        logits = model(idx, cache=cache, last_only=True).logits[:, -1].repeat_interleave(n, 0)
        cache.fan_out(n)
        step = static_step(model, decode) if static else None
    seq, seq_start = idx.repeat_interleave(n, 0), start.repeat_interleave(n)
    rows = B * n
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    active = torch.arange(rows, device=device)  # the output row of each batch row
    done = torch.zeros(rows, dtype=torch.bool, device=device)  # batch rows that have stopped
    n_steps = 0
    for t in range(max_new_tokens):
        if not use_cache:  # the slow path the tests compare against: recompute everything
            logits = model(seq, start=seq_start, last_only=True).logits[:, -1]
        noise = None
        if temperature > 0:  # one Exp(1) per output row and vocabulary entry, whichever rows are in the batch
            noise = torch.empty(rows, logits.size(-1), device=device).exponential_(generator=generator)[active]
        next_ids = sample_next(logits, temperature, top_k, top_p, generator, noise)
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        out[active, t] = next_ids
        n_steps = t + 1
        done |= torch.isin(next_ids, stop)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        keep = _rows_to_keep(done, static)
        if keep is not None:
            active, next_ids, done = active[keep], next_ids[keep], done[keep]
            if use_cache:
                cache.keep(keep)
            else:
                seq, seq_start = seq[keep], seq_start[keep]
        if static:  # the step reads the filled slots, rounded up to a multiple of 64 (a few shapes, not one
            span = min(-(-cache.length // 64) * 64, cache.valid.size(1))  # per step); the sampler stores the new token
            logits, latents, k_ropes = step(next_ids, cache.latent[:, :, :span], cache.k_rope[:, :, :span],
                                            cache.valid[:, :span], cache.pos)
            cache.append(latents, k_ropes)
        elif use_cache:
            logits = model(next_ids[:, None], cache=cache).logits[:, -1]
        else:
            seq = torch.cat([seq, next_ids[:, None]], 1)
    model.train(was_training)
    tokens, finished, stops = [], [], set(stop_ids)
    for r in range(rows):
        row = out[r, :n_steps].tolist()
        hits = [i for i, tok in enumerate(row) if tok in stops]
        tokens.append(row[:hits[0] + 1] if hits else row)
        finished.append(bool(hits))  # False: cut at max_new_tokens
    return Generation(tokens, finished)


def _rows_to_keep(done, static):
    """Which batch rows stay for the next step (None: all). Eager: drop the stopped rows once they are a
    quarter of the batch. Static: shrink only to a power of two (at most half the batch), filling it with
    stopped rows, so a captured step sees a few batch sizes, not one per step."""
    n_live = int((~done).sum())
    if not static:
        return ~done if 4 * (done.numel() - n_live) >= done.numel() else None
    size = 1 << max(n_live - 1, 0).bit_length()  # the smallest power of two >= n_live
    if size > done.numel() // 2:
        return None
    keep = ~done
    keep[done.nonzero()[:size - n_live, 0]] = True
    return keep


@torch.no_grad()
def _generate_speculative(model, prompts, max_new_tokens, n, temperature, top_k, top_p, stop_ids, pad_id, seed):
    """generate(..., speculative=True): the MTP module drafts the token after the next one, and one forward of the
    main model over (pending, draft) verifies it (Leviathan et al. 2023, Algorithm 1, with one draft token;
    DeepSeek-V3 sec. 2.2 / 5.4.3): greedy keeps the draft when it is the argmax; sampling keeps it by
    accept_draft's rule. Each step emits 1 or 2 tokens per row and the output is distributed as plain sampling.
    Same arguments and result as generate (Generation.acceptance = share of drafts accepted)."""
    idx, start, generator, dtype = _setup(model, prompts, max_new_tokens, pad_id, seed)
    device, (B, L) = idx.device, idx.shape
    was_training = model.training
    model.eval()
    greedy = temperature == 0
    probs = lambda logits: filtered_probs(logits, temperature, top_k, top_p)  # noqa: E731

    # Prefill: main model over the prompt; the MTP layer over every prompt slot whose next token is known.
    # Each step claims 2 slots (one freed again on a rejection); the draft verified with a row's last token may
    # sit one position past the RoPE table: it can never be emitted, so its position is clamped.
    cache = KVCache(model.cfg, B, L + 2 * max_new_tokens + 2, device, dtype, start=start,
                    max_position=model.cfg.max_seq_len - 1)
    out = model(idx, cache=cache)
    if L > 1:
        model.mtp_draft(out.hidden[:, :-1], idx[:, 1:], out.positions[:, :-1], cache, slot=0)
    cache.fan_out(n)
    rows = B * n
    hidden_last = out.hidden[:, -1:].repeat_interleave(n, 0)
    pos_last = out.positions[:, -1:].repeat_interleave(n, 0)
    pending = sample_next(out.logits[:, -1].repeat_interleave(n, 0), temperature, top_k, top_p, generator)
    draft_logits = model.mtp_draft(hidden_last, pending[:, None], pos_last, cache, slot=L - 1)[:, -1]

    stops = set(stop_ids)
    emitted = [[] for _ in range(rows)]
    active = list(range(rows))  # the output row of each batch row; rows leave the batch when they stop
    drafted = accepted_total = 0
    while active:
        # 1. draft the token after `pending`; 2. verify both with one forward of the main model
        if greedy:
            draft = draft_logits.argmax(-1)
        else:
            q = probs(draft_logits)
            draft = torch.multinomial(q, 1, generator=generator)[:, 0]
        slot = cache.length
        out = model(torch.stack([pending, draft], 1), cache=cache)  # slots: pending, draft
        if greedy:
            truth = out.logits[:, 0].argmax(-1)
            accepted, replacement = truth == draft, truth
        else:
            accepted, replacement = accept_draft(probs(out.logits[:, 0]), q, draft, generator)
        after_draft = sample_next(out.logits[:, 1], temperature, top_k, top_p, generator)

        acc, pend, drf = accepted.tolist(), pending.tolist(), draft.tolist()
        done = [False] * len(active)
        for b, r in enumerate(active):
            drafted += 1
            accepted_total += acc[b]
            for tok in [pend[b]] + ([drf[b]] if acc[b] else []):
                emitted[r].append(tok)
                if tok in stops or len(emitted[r]) >= max_new_tokens:
                    done[b] = True
                    break
        # 3. rows that rejected the draft forget its slot; the next pending token and the next draft
        cache.reject(~accepted, slot + 1)
        pending = torch.where(accepted, after_draft, replacement)
        mtp_next = torch.stack([torch.where(accepted, draft, replacement), after_draft], 1)
        mtp_logits = model.mtp_draft(out.hidden, mtp_next, out.positions, cache, slot=slot)  # (rows, 2, V)
        draft_logits = torch.where(accepted[:, None], mtp_logits[:, 1], mtp_logits[:, 0])
        if any(done):  # stopped rows leave the batch (they would otherwise keep advancing their positions)
            keep = torch.tensor([not d for d in done], device=device)
            cache.keep(keep)
            pending, draft_logits = pending[keep], draft_logits[keep]
            active = [r for r, d in zip(active, done) if not d]
    model.train(was_training)
    finished = [bool(e) and e[-1] in stops for e in emitted]
    return Generation(emitted, finished, accepted_total / max(drafted, 1))
