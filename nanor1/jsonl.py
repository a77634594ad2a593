"""Reading JSON-lines files whose errors name the file and line; trimming a run's metrics log on resume."""
import json
import os


MAX_LINE_BYTES = 1 << 20  # a problem or an SFT pair is far shorter; longer lines are rejected, not parsed


def read_jsonl(path):
    """Yield (where, object) for each non-blank line; where = 'path:line'. Whatever is wrong with a line (bad
    UTF-8, bad JSON, a number too long for Python's int parser, nesting too deep, not an object) is one
    ValueError naming path:line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            except ValueError as e:  # e.g. an integer of more than 4300 digits
                raise ValueError(f"{where}: {str(e).splitlines()[0][:100]}") from None
            except RecursionError:
                raise ValueError(f"{where}: JSON nested too deep") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, row


def truncate_log(path, step):
    """Keep the rows of a metrics.jsonl whose 'step' is at most `step` (a resumed run continues from its
    checkpoint; rows a killed run wrote after it would otherwise appear twice). Rewritten atomically."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
    os.replace(tmp, path)
    return len(lines) - len(keep)
