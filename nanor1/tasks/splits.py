"""Splits and draws shared by the synthetic tasks: train / val / test by a hash of each problem's canonical key,
and n distinct problems drawn without replacement (evaluation sets are sets, not samples with repeats)."""
import random
import zlib

SPLITS = ("train", "val", "test")


def split_by_hash(key, test_frac, val_frac):
    """'test', 'val' or 'train' for a problem's canonical key, fixed by its CRC32 (no state, no leaks between runs)."""
    h = zlib.crc32(key.encode()) % 10_000
    return "test" if h < test_frac * 10_000 else "val" if h < (test_frac + val_frac) * 10_000 else "train"


def draw_distinct(universe, draw, n, seed_text, max_universe=200_000):
    """n distinct problems: a seeded sample of the enumerated universe (a list, or None when too large to list),
    else repeated draw(rng) with duplicates skipped (stopping after 50 misses in a row per wanted problem)."""
    rng = random.Random(seed_text)
    if universe is not None and len(universe) <= max_universe:
        return rng.sample(universe, min(n, len(universe)))
    out, seen, misses = [], set(), 0
    while len(out) < n and misses < 50 * max(n, 20):
        p = draw(rng)
        if p is None or p["id"] in seen:
            misses += 1
            continue
        seen.add(p["id"])
        out.append(p)
    return out
