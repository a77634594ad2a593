import os

# Triton kernels run through Triton's interpreter on a machine without CUDA. This must be set before any
# @triton.jit function is defined, i.e. before the tests import nanor1.kernels.
try:
    import torch
    _has_cuda = torch.cuda.is_available()
except ImportError:
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# The tests read only what the repository ships: a small GSM8K fixture in the official format.
GSM8K_FIXTURE = os.path.join(os.path.dirname(__file__), "data", "gsm8k")


@pytest.fixture(scope="session")
def gsm8k_path():
    return GSM8K_FIXTURE


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    """A 512-token tokenizer trained on arithmetic text and Countdown prompts (a second or two). Not on Countdown's
    search traces: the tokenizer's tests should not depend on the search (course assignments blank it)."""
    from nanor1.tasks import corpus, make_task
    from nanor1.tokenizer import train_tokenizer
    countdown = make_task("countdown")
    prompts = [countdown.prompt(p) for p in countdown.problems("train", 300, seed=0)]
    return train_tokenizer(list(corpus([make_task("arithmetic")], n_per_task=300)) + prompts, 512)
