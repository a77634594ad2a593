"""Bad input and faults: fuzzing every surface that reads untrusted input, and the checkpoint / log faults of a
killed or corrupted run (issue #17). docs/reliability.md is this file's table."""
import json
import os

import pytest
import torch

from nanor1 import checkpoint
from nanor1.bench.reliability import SURFACES, fuzz
from nanor1.evaluate import summarize
from nanor1.jsonl import read_jsonl, truncate_log
from nanor1.tasks import make_task
from nanor1.tasks.verify import Score, VerifyError, parse_number
from nanor1.tokenizer import MAX_TEXT_CHARS


@pytest.mark.parametrize("surface", SURFACES)
def test_fuzzed_surfaces_answer_with_a_result_or_their_own_error(surface):
    n = 10_000 if surface.startswith(("score", "parse", "evaluate")) else 300  # >= 10,000 completions per task
    tried, failures, _ = fuzz(surface, n, seed=1)
    assert tried == n and failures == [], failures[:5]


@pytest.mark.parametrize("text,value", [("1,234", 1234), ("$5", 5), ("-$5", -5), ("1,234,567.5", 2469135 / 2),
                                        (" 42 ", 42), ("18.", 18)])
def test_parse_number_accepts_well_formed_numbers(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1 2", "5,0", "1,5", "2 1/2", "12,34", ",123", "1,,234", "1,234,56"])
def test_parse_number_refuses_misplaced_separators(text):
    with pytest.raises(VerifyError):  # "1 2" once scored as 12, "1,5" as 15, "2 1/2" as 21/2
        parse_number(text)


def _sample(answer, correct):
    return {"score": Score(0.1, float(correct), correct, answer), "ids": [1], "finished": True}


def test_majority_vote_pools_equal_values():
    from nanor1.evaluate import task_vote
    arithmetic, countdown = make_task("arithmetic"), make_task("countdown")
    # "11" and "11.0" and "$11" are one vote (3) against "12" (2): the majority is 11, which is correct
    samples = [dict(_sample(a, a != "12"), vote=task_vote(arithmetic, a)) for a in ("11", "12", "11.0", "12", "$11")]
    assert summarize([samples])["majority"] == 1.0
    # Countdown: three equivalent correct expressions (value 14) outvote "15" twice; by raw string, "15" won
    exprs = [("(3+4)*2", True), ("2*(4+3)", True), ("7+7", True), ("15", False), ("15", False)]
    samples = [dict(_sample(e, c), vote=task_vote(countdown, e)) for e, c in exprs]
    assert summarize([samples])["majority"] == 1.0
    assert summarize([[_sample(e, c) for e, c in exprs]])["majority"] == 0.0  # no vote key: the raw strings


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "f.jsonl"
    cases = [(b'{"a": 1}\n\xff\xfe\n', r"f.jsonl:2: not UTF-8"), (b'{"a": ' + b"9" * 5000 + b"}\n", r"f.jsonl:1: "),
             (b"[" * 100000 + b"]" * 100000 + b"\n", r"f.jsonl:1: "), (b'{"a": 1}\n\n[1]\n', r"f.jsonl:3: expected")]
    for data, pattern in cases:
        path.write_bytes(data)
        with pytest.raises(ValueError, match=pattern):
            list(read_jsonl(path))


def test_tokenizer_refuses_text_that_would_panic_tiktoken(small_tokenizer):
    with pytest.raises(ValueError, match="longer than the tokenizer accepts"):
        small_tokenizer.encode("What is 2 + 3?" + " " * 1_000_000)
    assert small_tokenizer.encode(" " * (MAX_TEXT_CHARS - 1))  # under the bound: fine


def test_checkpoint_checksum_catches_a_flipped_byte_and_temp_files_are_cleaned(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(str(path), model={"w": torch.arange(2_000_000, dtype=torch.float32)}, model_config={},
                    tokenizer={}, step=3)
    assert checkpoint.load(path)["step"] == 3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        checkpoint.load(path)
    path.write_bytes(bytes(data[: len(data) // 3]))  # a truncated file
    with pytest.raises(ValueError, match="not a readable nanor1 checkpoint"):
        checkpoint.load(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="missing model_config, tokenizer"):
        checkpoint.load(path)
    for i in range(5):  # what killed saves leave behind
        (tmp_path / f"{checkpoint.TEMP_PREFIX}{i}.pt").write_bytes(b"x" * 100)
    assert checkpoint.clean_temp(str(tmp_path)) == 5 and not list(tmp_path.glob(checkpoint.TEMP_PREFIX + "*"))


def test_metrics_log_is_cut_back_to_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 10, 20, 30)) + '{"step": 4')  # cut line
    assert truncate_log(str(path), 20) == 2
    assert [json.loads(line)["step"] for line in open(path)] == [0, 10, 20]


def test_a_tokenizer_folder_half_written_is_retrained(tmp_path):
    from nanor1.tasks import get_tokenizer
    tasks = [make_task("arithmetic")]
    folder = tmp_path / "tok"
    tok = get_tokenizer(str(folder), tasks, 300)
    os.remove(folder / "tokenizer.tiktoken")  # a crash between the two writes leaves only the json
    assert get_tokenizer(str(folder), tasks, 300).ranks == tok.ranks  # retrained, not a failure forever
