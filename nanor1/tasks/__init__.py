"""The tasks, each behind the same small interface:

    task.problems(split, n, seed) -> n DISTINCT problem dicts (each has an 'id'), drawn without replacement;
                                     the whole split in a seeded order when it has fewer than n.
                                     split: 'train' | 'val' (tuning, in-run evaluation) | 'test' (reporting)
    task.prompt(problem)          -> the user's text
    task.sft_target(problem, rng) -> a response "<think>...</think><answer>...</answer>"
    task.score(problem, text)     -> verify.Score(format, correctness, correct, answer); .reward is the total
"""
import random

from nanor1.config import ConfigError
from nanor1.tasks.arithmetic import Arithmetic, ArithmeticConfig
from nanor1.tasks.countdown import Countdown, CountdownConfig
from nanor1.tasks.gsm8k import GSM8K, GSM8KConfig
from nanor1.tasks.verify import Rewards, Score
from nanor1.tokenizer import Tokenizer, train_tokenizer

TASKS = {"arithmetic": Arithmetic, "countdown": Countdown, "gsm8k": GSM8K}


def make_task(name, cfg=None, rewards=None):
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[name](cfg, rewards)


def make_tasks(cfg, names):
    """The named tasks, each with its settings from a run's config (cfg.arithmetic, cfg.countdown, cfg.gsm8k)
    and the run's rewards (cfg.rewards)."""
    return [make_task(name, getattr(cfg, name, None), cfg.rewards) for name in names]


def corpus(tasks, n_per_task=2000, seed=0):
    """Text for the tokenizer: prompts and SFT targets of each task's train split (GSM8K: all of train)."""
    rng = random.Random(seed)
    for task in tasks:
        problems = task.problems("train", 10 ** 9 if task.name == "gsm8k" else n_per_task, seed)
        for problem in problems:
            yield task.prompt(problem)
            yield task.sft_target(problem, rng)


def get_tokenizer(folder, tasks, vocab_size, retrain=False):
    """Load the tokenizer cached in `folder`, or train it on the tasks' text and cache it there. A cached one
    trained for another vocab_size or other tasks is an error naming both (retrain=True replaces it)."""
    names = sorted(t.name for t in tasks)
    if Tokenizer.exists(folder) and not retrain:
        tok = Tokenizer.load(folder)  # its n_vocab may be below vocab_size if the corpus ran out of merges
        made_for = Tokenizer.made_for(folder)
        wanted = {"vocab_size": vocab_size, "tasks": names}
        differ = [f"{k}: {made_for.get(k)!r} -> {wanted[k]!r}" for k in wanted
                  if k in made_for and made_for[k] != wanted[k]]
        if not made_for and tok.n_vocab > vocab_size:  # saved before this record existed
            differ = [f"vocab_size: {tok.n_vocab} -> {vocab_size}"]
        if differ:
            raise ConfigError(f"the tokenizer in {folder} was trained for another run ({'; '.join(differ)}): "
                              "delete it, set another tokenizer_dir, or --overwrite=true to retrain it")
        return tok
    tok = train_tokenizer(corpus(tasks), vocab_size)
    tok.save(folder, made_for={"vocab_size": vocab_size, "tasks": names})
    return tok


__all__ = ["TASKS", "make_task", "corpus", "get_tokenizer", "Arithmetic", "ArithmeticConfig", "Countdown",
           "CountdownConfig", "GSM8K", "GSM8KConfig", "Rewards", "Score"]
