"""Sample from a trained checkpoint, or evaluate it.

    python sample.py out/sft --prompt "What is 12 + 34?"                      # print completions
    python sample.py out/sft --task arithmetic [--split test] [--n 8]         # pass@1, pass@k, majority vote
    python sample.py out/sft --problems FILE.jsonl [--n 8]                     # evaluate given problems

Problem files, one JSON object a line: Countdown {"nums": [...], "target": n}; GSM8K in the official format
{"question": ..., "answer": "... #### n"}; arithmetic {"question": "What is 2 + 3?", "answer": 5}.
"""
import argparse
import sys
from fractions import Fraction

import torch

from nanor1 import checkpoint
from nanor1.engine import generate
from nanor1.evaluate import complete, summarize
from nanor1.jsonl import read_jsonl
from nanor1.tasks.gsm8k import final_answer


def read_problems(path):
    """-> (task name, problems); every line must be of the same kind. Errors name file and line."""
    kinds, problems = set(), []
    for where, row in read_jsonl(path):
        if "nums" in row:
            nums, target = row.get("nums"), row.get("target")
            if not (isinstance(nums, list) and all(type(n) is int for n in nums) and type(target) is int):
                raise ValueError(f"{where}: countdown lines need 'nums' (list of ints) and 'target' (int)")
            kinds.add("countdown")
            problems.append({"id": where, "nums": nums, "target": target})
        elif isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            kinds.add("gsm8k")
            problems.append({"id": where, "question": row["question"], "solution": row["answer"],
                             "answer": final_answer(row["answer"], where)})
        elif isinstance(row.get("question"), str) and type(row.get("answer")) is int:
            kinds.add("arithmetic")
            problems.append({"id": where, "question": row["question"], "answer": Fraction(row["answer"])})
        else:
            raise ValueError(f"{where}: not a countdown, GSM8K or arithmetic problem (see sample.py --help)")
    if len(kinds) != 1:
        raise ValueError(f"{path}: expected problems of one kind, found {sorted(kinds) or 'none'}")
    return kinds.pop(), problems


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint file or an out dir holding ckpt.pt")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="a user prompt to complete")
    what.add_argument("--task", choices=["arithmetic", "countdown", "gsm8k"], help="evaluate on a task's split")
    what.add_argument("--problems", help="evaluate the problems in this JSONL file")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--count", type=int, default=200, help="problems to evaluate (--task)")
    p.add_argument("--n", type=int, default=1, help="samples per problem (pass@k, majority vote)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for n=1, else 1.0")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--speculative", action="store_true", help="MTP self-speculative decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=3, help="completions to print (--task / --problems)")
    p.add_argument("--gsm8k_path", default=None, help="folder of the GSM8K jsonl files (--task gsm8k)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)

    try:
        model, tok, ckpt = checkpoint.load_model(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    model.eval()
    if args.prompt is not None:
        gen = generate(model, [tok.render_prompt(args.prompt)], args.max_new_tokens, n=args.n,
                       temperature=temperature, top_k=args.top_k, top_p=args.top_p, stop_ids=tok.stop_ids,
                       pad_id=tok.pad_id, seed=args.seed, speculative=args.speculative)
        for i, ids in enumerate(gen.tokens):
            print(f"--- sample {i}{'' if gen.finished[i] else ' (truncated)'}\n{tok.decode_response(ids)}")
        if gen.acceptance is not None:
            print(f"(speculative: {gen.acceptance:.0%} of drafts accepted)")
        return

    saved = ckpt.get("config", {})
    task_cfgs = {"arithmetic": saved.get("arithmetic"), "countdown": saved.get("countdown"),
                 "gsm8k": saved.get("gsm8k")}
    try:
        if args.problems:
            name, problems = read_problems(args.problems)
        else:
            name = args.task
        task = _make_task(name, task_cfgs[name], args.gsm8k_path)
        if not args.problems:
            problems = task.problems(args.split, args.count, args.seed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    results = complete(model, tok, task, problems, n=args.n, temperature=temperature,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                       top_k=args.top_k, top_p=args.top_p, speculative=args.speculative, progress=True)
    summary = summarize(results, ks=sorted({1, args.n}))
    for problem, samples in list(zip(problems, results))[:args.show]:
        s = samples[0]
        print(f"--- {task.prompt(problem)}\n{s['text']}\n[{'correct' if s['score'].correct else 'wrong'}]")
    label = args.problems or f"{name} {args.split}"
    print(f"\n{label}: {len(problems)} problems, n={args.n}, temperature={temperature}")
    for key, value in summary.items():
        print(f"  {key:>12}: {value:.3f}" if key != "mean_length" else f"  {key:>12}: {value:.1f} tokens")


def _make_task(name, saved_cfg, gsm8k_path):
    from nanor1.config import config_from_dict
    from nanor1.tasks import TASKS, ArithmeticConfig, CountdownConfig, GSM8KConfig
    cls = {"arithmetic": ArithmeticConfig, "countdown": CountdownConfig, "gsm8k": GSM8KConfig}[name]
    cfg = config_from_dict(cls, saved_cfg) if saved_cfg else cls()
    if gsm8k_path and name == "gsm8k":
        cfg.path = gsm8k_path
    return TASKS[name](cfg)


if __name__ == "__main__":
    main()
