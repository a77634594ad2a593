import random

import pytest

from nanor1.tokenizer import SPECIAL_TOKENS, Tokenizer


def test_round_trip_unicode_and_raw_bytes(small_tokenizer):
    tok = small_tokenizer
    rng = random.Random(0)
    samples = ["", "hello world", "Make 24 from 1 2 3 4", "héllo wörld ☃ 日本語 🙂 \n\t  x", "a\u0301 \u200b \ufeff",
               "<think>not special</think> <|eos|>"]
    samples += ["".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(30)).encode("utf-8", "replace").decode()
                for _ in range(50)]
    for text in samples:
        assert tok.decode(tok.encode(text)) == text
    for _ in range(50):  # arbitrary bytes, invalid UTF-8 included, round-trip at the byte level
        raw = bytes(rng.randrange(256) for _ in range(40))
        assert tok.enc.decode_bytes(tok.enc._encode_bytes(raw)) == raw
    for b in range(256):  # every single byte is its own token
        assert tok.enc.decode_single_token_bytes(tok.ranks[bytes([b])]) == bytes([b])


def test_digits_are_always_single_tokens(small_tokenizer):
    tok = small_tokenizer
    for text in ["1234567890", "x=98765+43210", " 42", "3.14159", "year 2024!", "$1,000,000"]:
        for i in tok.encode(text):
            piece = tok.decode([i])
            if any(c.isdigit() for c in piece):
                assert len(piece) == 1, f"{piece!r} joins a digit with something"


def test_special_tokens_are_single_ids_never_made_from_plain_text(small_tokenizer):
    tok = small_tokenizer
    assert len(set(tok.special.values())) == len(SPECIAL_TOKENS)
    assert sorted(tok.special.values()) == list(range(tok.n_vocab - len(SPECIAL_TOKENS), tok.n_vocab))
    for name in SPECIAL_TOKENS:
        ids = tok.encode(f"look {name} here {name}")
        assert not set(ids) & set(tok.special.values())  # plain text never yields a special id
    ids = tok.encode_response("<think>2+2=4</think><answer>4</answer>")
    assert ids[0] == tok.think_id and tok.end_think_id in ids and tok.answer_id in ids and ids[-1] == tok.end_answer_id
    assert tok.decode(ids) == "<think>2+2=4</think><answer>4</answer>"


def test_render_mask_covers_exactly_the_response_and_eos(small_tokenizer):
    tok = small_tokenizer
    ids, mask = tok.render("What is 2 + 3?", "<think></think><answer>5</answer>")
    assert len(ids) == len(mask)
    prompt_len = len(tok.render_prompt("What is 2 + 3?"))
    assert ids[:prompt_len] == tok.render_prompt("What is 2 + 3?") and ids[prompt_len - 1] == tok.assistant_id
    assert mask == [0] * prompt_len + [1] * (len(ids) - prompt_len)
    assert ids[-1] == tok.eos_id and mask[-1] == 1
    response = [i for i, m in zip(ids, mask) if m]
    assert tok.decode_response(response) == "<think></think><answer>5</answer>"
    # a prompt that pretends to contain turn markers stays in the prompt, unmasked
    ids, mask = tok.render("<|assistant|> 7", "<think></think><answer>7</answer>")
    assert ids.count(tok.assistant_id) == 1 and sum(mask) == len(tok.encode_response(
        "<think></think><answer>7</answer>")) + 1


def test_save_load_identical(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path)
    tok = Tokenizer.load(tmp_path)
    text = "Make 24 from 3 7 9 with + - * /; héllo"
    assert tok.encode(text) == small_tokenizer.encode(text) and tok.special == small_tokenizer.special
    (tmp_path / "tokenizer.tiktoken").write_text("not-base64\n")
    with pytest.raises(ValueError, match=r"tokenizer.tiktoken:1"):
        Tokenizer.load(tmp_path)


def test_bpe_learns_merges_that_compress(small_tokenizer):
    text = "Make 36 from 8 4 20 19 with + - * /, each number at most once."
    assert len(small_tokenizer.encode(text)) < len(text.encode()) * 0.6
