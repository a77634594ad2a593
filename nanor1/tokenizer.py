"""Byte-level BPE: a plain-Python trainer, tiktoken for fast encoding, and the chat format.

Training (Sennrich et al. 2016, byte-level as in GPT-2): split text into chunks with a regex, start from the
256 bytes, then repeatedly merge the most frequent adjacent pair into a new token. The learned ranks become a
tiktoken.Encoding, so encoding at training time is fast. Every digit is a chunk of its own, so no merge ever
joins digits: "1234" is always the four tokens 1 2 3 4 (arithmetic depends on it).

Chat format (one sequence):   <|bos|> <|user|> prompt <|assistant|> response <|eos|>
The loss mask is 1 exactly on the response tokens and the closing <|eos|>.
"""
import base64
import collections
import heapq
import json
import os
import tempfile

import regex
import tiktoken

# GPT-4-style pre-split, except that \p{N} matches ONE character: digits never merge.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")

BOS, EOS, PAD, USER, ASSISTANT = "<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"
THINK, END_THINK, ANSWER, END_ANSWER = "<think>", "</think>", "<answer>", "</answer>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, THINK, END_THINK, ANSWER, END_ANSWER]
RESPONSE_TAGS = [THINK, END_THINK, ANSWER, END_ANSWER]  # may appear as single tokens inside a response
_TAG_SPLIT = regex.compile("(" + "|".join(regex.escape(t) for t in RESPONSE_TAGS) + ")")


def train_bpe(texts, n_ranks):
    """Learn byte-level BPE ranks from an iterable of strings: {token bytes: rank}, with len == n_ranks."""
    assert n_ranks >= 256, "n_ranks counts the 256 single bytes, so it must be at least 256"
    chunk_counts = collections.Counter()
    pattern = regex.compile(SPLIT_PATTERN)
    for text in texts:
        chunk_counts.update(pattern.findall(text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each word: a list of token ids
    counts = list(chunk_counts.values())
    vocab = [bytes([b]) for b in range(256)]  # token id -> bytes

    pair_counts = collections.Counter()  # (a, b) -> frequency over the corpus
    pair_words = collections.defaultdict(set)  # (a, b) -> indices of the words that contain it
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            pair_words[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_counts.items()]  # max-heap with lazy deletion
    heapq.heapify(heap)
    token_of_bytes = {b: i for i, b in enumerate(vocab)}

    while len(token_of_bytes) < n_ranks and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count or neg_count == 0:
            continue  # stale heap entry
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = token_of_bytes.get(merged)
        if new_id is None:  # two different merges can spell the same bytes: reuse the token
            new_id = len(vocab)
            vocab.append(merged)
            token_of_bytes[merged] = new_id
        changed = set()
        for w in pair_words.pop(pair):
            word, count = words[w], counts[w]
            for old in zip(word, word[1:]):  # remove this word's pairs, merge, add them back
                pair_counts[old] -= count
                changed.add(old)
            i, out = 0, []
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += count
                pair_words[new].add(w)
                changed.add(new)
        pair_counts.pop(pair, None)
        for p in changed:
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    ranks = {}
    for b in vocab:  # the ranks tiktoken wants: bytes -> id, in creation order
        ranks.setdefault(b, len(ranks))
    return ranks


class Tokenizer:
    """tiktoken does the encoding; this adds the special tokens and the chat format."""

    def __init__(self, ranks):
        self.ranks = ranks
        self.special = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding(name="nanor1", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=self.special)
        self.n_vocab = len(ranks) + len(SPECIAL_TOKENS)
        for tok, i in self.special.items():  # self.bos_id, self.eos_id, ..., self.end_answer_id
            name = {THINK: "think", END_THINK: "end_think", ANSWER: "answer", END_ANSWER: "end_answer"}.get(
                tok, tok.strip("<|>"))
            setattr(self, f"{name}_id", i)
        self.stop_ids = (self.eos_id, self.end_answer_id)  # generation stops on either

    def encode(self, text):
        """Plain text -> ids. Text that merely looks like a special token stays plain text."""
        return self.enc.encode_ordinary(_bounded(text))

    def encode_response(self, text):
        """A response may carry the four reasoning tags; each becomes its single special id."""
        ids = []
        for piece in _TAG_SPLIT.split(_bounded(text)):
            if piece in RESPONSE_TAGS:
                ids.append(self.special[piece])
            elif piece:
                ids.extend(self.enc.encode_ordinary(piece))
        return ids

    def decode(self, ids):
        return self.enc.decode(list(ids))

    def decode_response(self, ids):
        """Text of a generated response: stops at <|eos|>, drops padding."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.decode([i for i in ids if i != self.pad_id])

    def render_prompt(self, prompt):
        """Ids that a generation starts from: <|bos|> <|user|> prompt <|assistant|>."""
        return [self.bos_id, self.user_id] + self.encode(prompt) + [self.assistant_id]

    def render(self, prompt, response):
        """(prompt, response) -> (ids, loss_mask); mask is 1 on the response and its closing <|eos|>."""
        prompt_ids = self.render_prompt(prompt)
        response_ids = self.encode_response(response) + [self.eos_id]
        return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)

    def save(self, folder, made_for=None):
        """tiktoken's text format (`base64(bytes) rank` per line) plus a small json with the specials and what
        it was trained for. Each file is written atomically, the json first: tokenizer.tiktoken is the marker
        that the folder is complete (a crash between the two writes leaves a folder that is retrained)."""
        os.makedirs(folder, exist_ok=True)
        lines = "".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in self.ranks.items())
        meta = json.dumps({"pattern": SPLIT_PATTERN, "special_tokens": self.special, "made_for": made_for or {}},
                          indent=1)
        marker = os.path.join(folder, "tokenizer.tiktoken")
        if os.path.exists(marker):
            os.remove(marker)  # the folder is incomplete until the new marker is in place
        _atomic_write_text(os.path.join(folder, "tokenizer.json"), meta)
        _atomic_write_text(marker, lines)

    @staticmethod
    def exists(folder):
        return all(os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer.tiktoken"))

    @staticmethod
    def made_for(folder):
        """What the tokenizer in folder was trained for: {'vocab_size', 'tasks'} ({} if not recorded)."""
        with open(os.path.join(folder, "tokenizer.json")) as f:
            return json.load(f).get("made_for", {})

    @classmethod
    def load(cls, folder):
        path = os.path.join(folder, "tokenizer.tiktoken")
        ranks = {}
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{path}:{lineno}: expected 'base64 rank', got {line.strip()[:40]!r}")
                ranks[base64.b64decode(parts[0])] = int(parts[1])
        with open(os.path.join(folder, "tokenizer.json")) as f:
            meta = json.load(f)
        tok = cls(ranks)
        if meta["pattern"] != SPLIT_PATTERN or meta["special_tokens"] != tok.special:
            raise ValueError(f"{folder}: tokenizer was saved with another pattern or special tokens; retrain it")
        return tok


MAX_TEXT_CHARS = 100_000  # far above any prompt or response here; tiktoken's regex overflows its stack near 1e6


def _bounded(text):
    """tiktoken panics (a PanicException, which `except Exception` does not catch) on very long whitespace runs:
    refuse text that long with a ValueError instead."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text of {len(text)} characters is longer than the tokenizer accepts ({MAX_TEXT_CHARS})")
    return text


def _atomic_write_text(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def train_tokenizer(texts, vocab_size):
    """vocab_size counts everything, the special tokens included."""
    return Tokenizer(train_bpe(texts, vocab_size - len(SPECIAL_TOKENS)))


def main():
    import argparse
    p = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on text files.")
    p.add_argument("files", nargs="+", help="UTF-8 text files")
    p.add_argument("--out", required=True, help="folder to write tokenizer.tiktoken and tokenizer.json")
    p.add_argument("--vocab_size", type=int, default=4096)
    args = p.parse_args()
    texts = [open(path, encoding="utf-8").read() for path in args.files]
    tok = train_tokenizer(texts, args.vocab_size)
    tok.save(args.out)
    print(f"saved {tok.n_vocab} tokens to {args.out}")


if __name__ == "__main__":
    main()
