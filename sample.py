"""Sample from a trained checkpoint, or evaluate it.

    python sample.py out/sft --prompt "What is 12 + 34?"                      # print completions
    python sample.py out/sft --task arithmetic [--split test] [--n 8]         # pass@1, pass@k, majority vote
    python sample.py out/sft --problems FILE.jsonl [--n 8]                     # evaluate given problems
    python sample.py out/sft out/grpo --task countdown --n 4 --count 1000      # paired bootstrap CIs, after - before
    python sample.py before.jsonl after.jsonl                                 # the same from saved outcomes

Problem files, one JSON object a line: Countdown {"nums": [...], "target": n}; GSM8K in the official format
{"question": ..., "answer": "... #### n"}; arithmetic {"question": "What is 2 + 3?", "answer": 5}.
"""
import argparse
import sys
from fractions import Fraction

from nanor1 import checkpoint
from nanor1.device import DTYPES, autocast, pick_device
from nanor1.engine import DECODE_MODES, generate
from nanor1.evaluate import (comparison_table, complete, load_outcomes, outcomes, paired_bootstrap, save_outcomes,
                             summarize)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="+", help="a checkpoint file or an out dir holding ckpt.pt; two of them "
                   "(before, after) evaluate both on the same problems and print paired bootstrap CIs; two saved "
                   "outcome files (.jsonl) just compare")
    what = p.add_mutually_exclusive_group(required=False)
    what.add_argument("--prompt", help="a user prompt to complete")
    what.add_argument("--task", choices=["arithmetic", "countdown", "gsm8k"], help="evaluate on a task's split")
    what.add_argument("--problems", help="evaluate the problems in this JSONL file")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--save_outcomes", default=None, help="write per-problem outcomes here (with two checkpoints: "
                   "PREFIX_before.jsonl, PREFIX_after.jsonl)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the paired CIs")
    p.add_argument("--count", type=int, default=200, help="problems to evaluate (--task)")
    p.add_argument("--n", type=int, default=1, help="samples per problem (pass@k, majority vote)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for n=1, else 1.0")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--speculative", action="store_true", help="MTP self-speculative decoding")
    p.add_argument("--decode", default="eager", choices=DECODE_MODES,
                   help="eager (the reference), static (fixed shapes), compiled (torch.compile of the static step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=3, help="completions to print (--task / --problems)")
    p.add_argument("--gsm8k_path", default=None, help="folder of the GSM8K jsonl files (--task gsm8k)")
    p.add_argument("--device", default="auto", help="auto: cuda, else mps, else cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 autocast on CUDA, else fp32")
    args = p.parse_args(argv)
    for name, ok, rule in (("count", args.count >= 1, ">= 1"), ("n", args.n >= 1, ">= 1"),
                           ("top_k", args.top_k >= 0, ">= 0"), ("top_p", 0 < args.top_p <= 1, "in (0, 1]"),
                           ("temperature", args.temperature is None or args.temperature >= 0, ">= 0"),
                           ("max_new_tokens", args.max_new_tokens >= 1, ">= 1"),
                           ("batch_size", args.batch_size >= 1, ">= 1")):
        if not ok:
            p.error(f"--{name} must be {rule}, got {getattr(args, name)}")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    if len(args.checkpoint) > 2:
        p.error("give one checkpoint, or two (before, after) to compare")
    if len(args.checkpoint) == 2 and all(c.endswith(".jsonl") for c in args.checkpoint):
        try:
            before, after = (load_outcomes(c) for c in args.checkpoint)
            print(comparison_table(paired_bootstrap(before, after, args.bootstrap), args.checkpoint))
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        return
    if not (args.prompt or args.task or args.problems):
        p.error("one of --prompt, --task, --problems is required (or two saved outcome files to compare)")
    if len(args.checkpoint) == 2 and args.prompt is not None:
        p.error("--prompt takes one checkpoint")

    device = pick_device(args.device)
    evaluated = []
    for i, path in enumerate(args.checkpoint):
        try:
            model, tok, ckpt = checkpoint.load_model(path, device)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            sys.exit(f"error: {e}")
        model.eval()
        if len(args.checkpoint) == 2:
            print(f"\n=== {['before', 'after'][i]}: {path}")
        with autocast(device, args.dtype):
            evaluated.append(run(args, model, tok, ckpt, temperature, ["before", "after"][i]
                                 if len(args.checkpoint) == 2 else None))
    if len(evaluated) == 2:
        print("\n" + comparison_table(paired_bootstrap(*evaluated, args.bootstrap), args.checkpoint))


def fit_budget(max_new_tokens, prompt_ids, model):
    """Clamp max_new_tokens so the longest prompt plus its answer fits the model's max_seq_len (with a note)."""
    room = model.cfg.max_seq_len - max(len(ids) for ids in prompt_ids)
    if room < 1:
        sys.exit(f"error: a prompt of {max(map(len, prompt_ids))} tokens leaves no room in the model's "
                 f"max_seq_len={model.cfg.max_seq_len}")
    if max_new_tokens > room:
        print(f"note: --max_new_tokens {max_new_tokens} lowered to {room} (the model's max_seq_len is "
              f"{model.cfg.max_seq_len})", file=sys.stderr)
    return min(max_new_tokens, room)


def run(args, model, tok, ckpt, temperature, role=None):
    """Complete a prompt, or evaluate problems (-> their per-problem outcomes)."""
    if args.prompt is not None:
        prompt = tok.render_prompt(args.prompt)
        args.max_new_tokens = fit_budget(args.max_new_tokens, [prompt], model)
        gen = generate(model, [prompt], args.max_new_tokens, n=args.n,
                       temperature=temperature, top_k=args.top_k, top_p=args.top_p, stop_ids=tok.stop_ids,
                       pad_id=tok.pad_id, seed=args.seed, speculative=args.speculative, decode=args.decode)
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
    args.max_new_tokens = fit_budget(args.max_new_tokens, [tok.render_prompt(task.prompt(q)) for q in problems], model)
    results = complete(model, tok, task, problems, n=args.n, temperature=temperature,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                       top_k=args.top_k, top_p=args.top_p, speculative=args.speculative, progress=True,
                       decode=args.decode)
    summary = summarize(results, ks=sorted({1, args.n}))
    for problem, samples in list(zip(problems, results))[:args.show]:
        s = samples[0]
        print(f"--- {task.prompt(problem)}\n{s['text']}\n[{'correct' if s['score'].correct else 'wrong'}]")
    label = args.problems or f"{name} {args.split}"
    print(f"\n{label}: {len(problems)} distinct problems, n={args.n}, temperature={temperature}")
    for key, value in summary.items():
        print(f"  {key:>12}: {value:.3f}" if key != "mean_length" else f"  {key:>12}: {value:.1f} tokens")
    rows = outcomes(task, problems, results)
    if args.save_outcomes:
        path = args.save_outcomes if role is None else f"{args.save_outcomes}_{role}.jsonl"
        save_outcomes(path, rows)
        print(f"per-problem outcomes: {path}")
    return rows


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
