"""The one way every entry point starts and reports (train_sft.py, train_grpo.py, python -m nanor1.rejection):

    python SCRIPT.py [CONFIG.py ...] [--key=value ...]      run
    python SCRIPT.py --help                                  usage, then every config key, its default and meaning

main(cls, run, doc) parses the config (a ConfigError is a one-line `error:` and exit 2), says which config files
and overrides it read, calls run(cfg), and turns Ctrl-C into a one-line note (the loops save before it arrives
here). The loops print their own run header (device, dtype, model size, outputs) and closing summary with
`report`, so a run says what it is doing from the first line to the last, as nanoGPT's scripts do.
"""
import dataclasses
import inspect
import os
import re
import sys
import typing

from nanor1.config import ConfigError, load_config

_FIELD_RE = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=.*?)?(?:\s+#\s*(.*))?$")


def field_comments(cls):
    """The trailing `# comment` of each field in the dataclass's source: the one-line meanings --help shows."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        m = _FIELD_RE.match(line)
        if m and m.group(2):
            out[m.group(1)] = m.group(2).strip()
    return out


def describe(cls, prefix=""):
    """-> rows (dotted key, default, meaning) for every field of the config dataclass, groups flattened."""
    rows, comments, default = [], field_comments(cls), cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += describe(hint, f"{prefix}{f.name}.")
            continue
        rows.append((prefix + f.name, _show(value), comments.get(f.name, "")))
    return rows


def _show(value):
    """A default as it is typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    return repr(value).replace(" ", "")


def help_text(cls, doc):
    rows = describe(cls)
    width = min(max(len(k) + len(d) for k, d, _ in rows) + 4, 60)
    lines = [doc.strip(), "", "Config keys (--key=value on the command line, key = value in a CONFIG.py file):"]
    for key, default, meaning in rows:
        left = f"  --{key}={default}"
        lines.append(left + (" " * max(2, width - len(left)) + meaning if meaning else ""))
    return "\n".join(lines)


def report(title, **fields):
    """One aligned block of `key: value` lines (run headers and closing summaries)."""
    print(f"{title}:")
    width = max(map(len, fields), default=0)
    for key, value in fields.items():
        print(f"  {key:<{width}}  {value}")
    sys.stdout.flush()


def parse(cls, argv, doc):
    """argv -> config, or exit: --help prints the keys (exit 0); a bad key or value is one line (exit 2)."""
    if any(a in ("-h", "--help", "-help", "help") for a in argv):
        print(help_text(cls, doc))
        sys.exit(0)
    try:
        cfg = load_config(cls, argv)
        if hasattr(cfg, "check"):
            cfg.check()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    files = [a for a in argv if not a.startswith("--")]
    overrides = [a for a in argv if a.startswith("--")]
    report("config", files=", ".join(files) or "(none: the defaults)", overrides=" ".join(overrides) or "(none)")
    return cfg


def main(cls, run, doc, argv=None):
    """The entry point of a script: parse, run, clean up."""
    cfg = parse(cls, sys.argv[1:] if argv is None else argv, doc)
    try:
        result = run(cfg)
        _end_distributed()
        return result
    except KeyboardInterrupt:
        print("interrupted (the last finished step was saved; --resume=true continues it)", file=sys.stderr)
        sys.exit(130)
    except ConfigError as e:  # a mismatch found once the run looked at its out_dir (stale state)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():  # torchrun: leave no gloo/nccl threads to abort at exit
            dist.destroy_process_group()


def _end_distributed():
    """A finished torchrun process: wait for the other ranks, tear the process group down, and exit without the
    interpreter's teardown, where gloo's threads can abort a process that has finished its work (seen as a
    SIGABRT 'terminate called without an active exception' in about half of the 2-process CPU runs)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
