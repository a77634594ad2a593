"""Compare several evaluations of the same problems against one baseline: a table of paired bootstrap CIs and a plot.

    python -m nanor1.compare BASELINE.jsonl NAME=OUTCOMES.jsonl [NAME=OUTCOMES.jsonl ...] [--out DIR]

Each file is sample.py's per-problem outcomes (--save_outcomes). Every arm is compared with the baseline, and
every pair of arms with each other (after - before, problems matched by id, 10,000 resamples of problems).
Writes DIR/comparison.md and DIR/comparison.png (pass@1 and mean length, 95% CI bars on the difference from the
baseline).
"""
import argparse
import itertools
import os

from nanor1.evaluate import load_outcomes, paired_bootstrap
from nanor1.plotting import pyplot


def rows_for(cmp, before, after):
    out = []
    for key, fmt in (("pass@1", ".3f"), ("length", ".1f")):
        c = cmp[key]
        out.append(f"| {after} vs {before} | {key} | {c['before']:{fmt}} | {c['after']:{fmt}} | {c['diff']:+{fmt}} | "
                   f"[{c['lo']:+{fmt}}, {c['hi']:+{fmt}}] |")
    return out


def compare(baseline_path, arms, n_boot=10_000):
    """arms: [(name, path)] -> (markdown, {name: comparison with the baseline})."""
    base = load_outcomes(baseline_path)
    loaded = {name: load_outcomes(path) for name, path in arms}
    vs_base = {name: paired_bootstrap(base, rows, n_boot) for name, rows in loaded.items()}
    n = min(c["problems"] for c in vs_base.values())
    lines = [f"Paired over {n} problems (mean over each problem's samples), after - before, 95% bootstrap CI.", "",
             "| comparison | metric | before | after | difference | 95% CI |", "|---|---|---|---|---|---|"]
    for name, cmp in vs_base.items():
        lines += rows_for(cmp, "baseline", name)
    for (a, ra), (b, rb) in itertools.combinations(loaded.items(), 2):
        lines += rows_for(paired_bootstrap(ra, rb, n_boot), a, b)
    return "\n".join(lines), vs_base


def plot(vs_base, path, title):
    plt = pyplot()
    if plt is None:
        return None
    names = list(vs_base)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key in zip(axes, ("pass@1", "length")):
        base = next(iter(vs_base.values()))[key]["before"]
        values = [vs_base[n][key]["after"] for n in names]
        err = [[vs_base[n][key]["diff"] - vs_base[n][key]["lo"] for n in names],
               [vs_base[n][key]["hi"] - vs_base[n][key]["diff"] for n in names]]
        ax.bar(names, values, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        ax.axhline(base, color="gray", ls="--", label=f"baseline {base:.3g}")
        ax.set_title(key if key == "pass@1" else "mean response length (tokens)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanor1.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("baseline")
    p.add_argument("arms", nargs="+", help="NAME=outcomes.jsonl")
    p.add_argument("--out", default=None, help="folder for comparison.md and comparison.png")
    p.add_argument("--title", default="at equal sampling cost, from the same cold start")
    p.add_argument("--bootstrap", type=int, default=10_000)
    args = p.parse_args(argv)
    arms = []
    for arm in args.arms:
        name, sep, path = arm.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: arm {arm!r} is not NAME=outcomes.jsonl")
        arms.append((name, path))
    table, vs_base = compare(args.baseline, arms, args.bootstrap)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "comparison.md"), "w") as f:
            f.write(table + "\n")
        png = plot(vs_base, os.path.join(args.out, "comparison.png"), args.title)
        print(f"wrote {os.path.join(args.out, 'comparison.md')}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
