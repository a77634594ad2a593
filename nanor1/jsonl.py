"""Reading JSON-lines files whose errors name the file and line."""
import json


def read_jsonl(path):
    """Yield (where, object) for each non-blank line; where = 'path:line'. Bad JSON is a ValueError there."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, row
