import runpy

import pytest
import torch

from nanor1.engine import accept_draft, generate, sample_next
from nanor1.model import GPT, KVCache, ModelConfig

ROOT = __file__.rsplit("/tests/", 1)[0]
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [4, 4, 4, 100, 200]]  # ragged


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(**runpy.run_path(f"{ROOT}/configs/model_test.py")["model"])
    return GPT(cfg).eval()


def test_greedy_with_cache_equals_recomputing_everything(model):
    fast = generate(model, PROMPTS, 20, temperature=0, use_cache=True)
    slow = generate(model, PROMPTS, 20, temperature=0, use_cache=False)
    assert fast.tokens == slow.tokens and all(len(t) == 20 for t in fast.tokens)
    assert fast.finished == [False, False, False]  # no stop ids: all cut at max_new_tokens


def test_padding_does_not_change_a_rows_output(model):
    together = generate(model, PROMPTS, 12, temperature=0).tokens
    alone = [generate(model, [p], 12, temperature=0).tokens[0] for p in PROMPTS]
    assert together == alone


def test_rows_stop_on_their_own(model):
    free = generate(model, PROMPTS, 16, temperature=0).tokens
    stop = free[0][5]  # a token row 0 emits at step 5
    out = generate(model, PROMPTS, 16, temperature=0, stop_ids=[stop])
    for row, gen, done in zip(free, out.tokens, out.finished):
        first = row.index(stop) if stop in row else None
        if first is None:
            assert gen == row and not done
        else:
            assert gen == row[:first + 1] and done and gen[-1] == stop
    assert len(out.tokens[0]) <= 6


def test_finished_rows_leave_the_batch_without_changing_the_others(model):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 200, (int(k),), generator=g).tolist() for k in torch.randint(2, 9, (12,), generator=g)]
    free = generate(model, prompts, 24, temperature=0).tokens
    stop = max(range(model.cfg.vocab_size), key=lambda t: sum(t in row[1:] for row in free))  # a common token
    out = generate(model, prompts, 24, temperature=0, stop_ids=[stop])
    stopped_at = {len(t) for t, done in zip(out.tokens, out.finished) if done}
    assert len(stopped_at) >= 3  # rows stop at different steps, so the batch shrinks more than once
    assert out.tokens == [generate(model, [p], 24, temperature=0, stop_ids=[stop]).tokens[0] for p in prompts]
    # sampling: the shrinking batch draws the same numbers with and without the cache
    a = generate(model, prompts, 24, n=2, temperature=1.0, seed=5, stop_ids=[stop])
    assert a.tokens == generate(model, prompts, 24, n=2, temperature=1.0, seed=5, stop_ids=[stop], use_cache=False).tokens


def test_fan_out_and_seeding(model):
    greedy = generate(model, PROMPTS, 8, temperature=0).tokens
    fanned = generate(model, PROMPTS, 8, n=3, temperature=0).tokens
    assert fanned == [g for g in greedy for _ in range(3)]
    a = generate(model, PROMPTS, 8, n=4, temperature=1.0, seed=7).tokens
    b = generate(model, PROMPTS, 8, n=4, temperature=1.0, seed=7).tokens
    c = generate(model, PROMPTS, 8, n=4, temperature=1.0, seed=8).tokens
    assert a == b and a != c
    assert len({tuple(t) for t in a[:4]}) > 1  # samples of one prompt differ
    # sampling from the fanned-out cache == sampling with full recomputation, same seed
    assert a == generate(model, PROMPTS, 8, n=4, temperature=1.0, seed=7, use_cache=False).tokens


def test_filters():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, 1.0, 1, 1.0, g), logits.argmax(-1))  # top-1 is greedy
    assert torch.equal(sample_next(logits, 1.0, 0, 1e-6, g), logits.argmax(-1))  # tiny nucleus is greedy
    top5 = logits.topk(5, -1).indices
    for _ in range(20):
        picks = sample_next(logits, 1.0, 5, 1.0, g)
        assert (top5 == picks[:, None]).any(-1).all()


def test_sampling_draws_from_the_tempered_and_cut_distribution():
    """The exponential race picks v with probability p_v: frequencies over 100,000 rows match p."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(100_000, 1)
    g = torch.Generator().manual_seed(0)
    for temperature, top_k, expected in [(0.7, 0, (logits[0] / 0.7).softmax(-1)),
                                         (1.0, 2, torch.tensor([2.0, 1.0]).softmax(-1).tolist() + [0.0, 0.0])]:
        picks = sample_next(logits, temperature, top_k, 1.0, g)
        freq = torch.bincount(picks, minlength=4).float() / picks.numel()
        assert torch.allclose(freq, torch.as_tensor(expected), atol=0.006)
    assert torch.equal(sample_next(logits[:3], 0.0, 0, 1.0, g), torch.zeros(3, dtype=torch.long))  # greedy


def test_fan_out_repeats_each_cached_row_n_times():
    cfg = ModelConfig(**runpy.run_path(f"{ROOT}/configs/model_test.py")["model"])
    cache = KVCache(cfg, 2, 8, "cpu", torch.float32, start=torch.tensor([0, 3]))
    cache.advance(5)
    cache.latent.normal_()
    cache.k_rope.normal_()
    before = (cache.latent.clone(), cache.k_rope.clone(), cache.valid.clone(), cache.pos.clone())
    cache.fan_out(3)
    assert cache.latent.shape[1] == 6 and cache.valid.shape[0] == 6
    for row in range(6):
        assert torch.equal(cache.latent[:, row], before[0][:, row // 3])
        assert torch.equal(cache.k_rope[:, row], before[1][:, row // 3])
        assert torch.equal(cache.valid[row], before[2][row // 3]) and cache.pos[row] == before[3][row // 3]


def test_too_long_is_a_clear_error(model):
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=256"):
        generate(model, [[1] * 250], 10)


def test_speculative_greedy_equals_plain_greedy(model):
    plain = generate(model, PROMPTS, 24, temperature=0)
    spec = generate(model, PROMPTS, 24, temperature=0, speculative=True)
    assert spec.tokens == plain.tokens and 0.0 <= spec.acceptance <= 1.0
    fanned = generate(model, PROMPTS, 10, n=2, temperature=0, speculative=True)
    assert fanned.tokens == [t[:10] for t in plain.tokens for _ in range(2)]
    free = plain.tokens
    stop = free[1][4]
    a = generate(model, PROMPTS, 24, temperature=0, stop_ids=[stop])
    b = generate(model, PROMPTS, 24, temperature=0, stop_ids=[stop], speculative=True)
    assert a.tokens == b.tokens and a.finished == b.finished


def test_speculative_with_an_always_right_drafter_emits_two_tokens_per_forward(model):
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.head.weight.zero_()  # every logit 0: greedy picks id 0 after anything, so every draft is right
    calls = []
    m.layers[0].register_forward_hook(lambda *a: calls.append(1))
    out = generate(m, PROMPTS, 12, temperature=0, speculative=True)
    assert out.tokens == [[0] * 12] * 3 and out.acceptance == 1.0
    assert len(calls) == 1 + 6  # prefill, then 6 forwards of the main model for 12 tokens


def test_acceptance_rule_keeps_the_target_distribution():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(200_000, 1)
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).repeat(200_000, 1)
    draft = torch.multinomial(q, 1, generator=g)[:, 0]
    accepted, replacement = accept_draft(p, q, draft, g)
    final = torch.where(accepted, draft, replacement)
    freq = torch.bincount(final, minlength=4).float() / final.numel()
    assert torch.allclose(freq, p[0], atol=0.005)
    expected_acceptance = torch.minimum(p[0], q[0]).sum()  # sum_x min(p, q)
    assert abs(accepted.float().mean() - expected_acceptance) < 0.005


def test_speculative_sampling_matches_plain_sampling_in_distribution(model):
    """First two sampled tokens of one prompt, many samples: same marginals with and without speculation."""
    prompt = [[3, 1, 4, 1, 5]]
    kw = dict(temperature=1.0, top_k=4)
    plain = generate(model, prompt, 2, n=3000, seed=1, **kw).tokens
    spec = generate(model, prompt, 2, n=3000, seed=2, speculative=True, **kw)
    for pos in (0, 1):
        a = torch.bincount(torch.tensor([t[pos] for t in plain]), minlength=512).float() / 3000
        b = torch.bincount(torch.tensor([t[pos] for t in spec.tokens]), minlength=512).float() / 3000
        assert (a - b).abs().max() < 0.05, pos


# ------------------------------------------------------------------ static shapes and speculative edge cases

def test_static_step_matches_the_eager_step(model):
    """GPT.decode_step (reads the whole cache, masked; dense MoE) gives the eager decoding path's logits, and
    KVCache.append leaves the cache as the eager path's own writes do."""
    from nanor1.model import KVCache
    idx = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    start = torch.tensor([2, 0])
    caches = [KVCache(model.cfg, 2, 12, "cpu", torch.float32, start=start) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model(idx, cache=cache)
        for ids in ([9, 8], [7, 3], [2, 2]):
            ids = torch.tensor(ids)
            eager = model(ids[:, None], cache=caches[0]).logits[:, -1]
            c = caches[1]
            static, latents, k_ropes = model.decode_step(ids, c.latent, c.k_rope, c.valid, c.pos)
            c.append(latents, k_ropes)
            torch.testing.assert_close(static, eager, atol=1e-5, rtol=1e-5)
    L = model.cfg.n_layers
    assert caches[1].length == caches[0].length and torch.equal(caches[1].pos, caches[0].pos)
    assert torch.equal(caches[1].valid, caches[0].valid)
    torch.testing.assert_close(caches[1].latent[:L], caches[0].latent[:L], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_static_and_compiled_decoding_give_the_eager_tokens(model, decode):
    """Same greedy tokens and the same seeded samples, with rows stopping at different times (so the batch
    shrinks: by quarters in the eager loop, to powers of two in the static one)."""
    prompts = PROMPTS + [[3, 1, 4, 1, 5], [2, 7, 1, 8]]
    free = generate(model, prompts, 20, temperature=0).tokens
    stops = [free[0][3]] + list(range(1, model.cfg.vocab_size, 9))  # ~1 token in 9 stops a sampled row
    for kwargs in (dict(temperature=0), dict(temperature=1.0, n=3, seed=11), dict(temperature=0.8, top_k=20,
                                                                                  top_p=0.9, n=2, seed=3)):
        eager = generate(model, prompts, 20, stop_ids=stops, **kwargs)
        other = generate(model, prompts, 20, stop_ids=stops, decode=decode, **kwargs)
        assert other.tokens == eager.tokens and other.finished == eager.finished
        assert len({len(t) for t in eager.tokens}) > 1  # rows did stop at different lengths


def test_unknown_decode_mode_is_a_clear_error(model):
    with pytest.raises(ValueError, match="decode must be one of"):
        generate(model, PROMPTS, 4, decode="fast")


def test_speculative_up_to_max_seq_len_and_with_rows_stopping_early(model):
    """Used to crash: prompt + max_new_tokens == max_seq_len puts the last draft one past the RoPE table, and
    stopped rows kept advancing their positions while long ones went on."""
    long_prompt = [5] * (model.cfg.max_seq_len - 30)
    plain = generate(model, [long_prompt], 30, temperature=0)
    spec = generate(model, [long_prompt], 30, temperature=0, speculative=True)
    assert spec.tokens == plain.tokens and len(spec.tokens[0]) == 30
    prompts = [long_prompt, [1, 2], [7, 7, 7]]
    free = generate(model, prompts, 30, temperature=0).tokens
    stop = free[1][1]  # the short prompt's row stops after 2 tokens
    a = generate(model, prompts, 30, temperature=0, stop_ids=[stop])
    b = generate(model, prompts, 30, temperature=0, stop_ids=[stop], speculative=True)
    assert a.tokens == b.tokens and len(a.tokens[1]) <= 2 and len(a.tokens[0]) > 2
    sampled = generate(model, prompts, 30, n=2, temperature=1.0, seed=0, stop_ids=[stop], speculative=True)
    assert all(1 <= len(t) <= 30 for t in sampled.tokens)
