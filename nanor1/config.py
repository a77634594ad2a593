"""Configs: typed defaults in a dataclass, a Python config file, then --key=value overrides.

    python train_sft.py configs/arithmetic.py --lr=3e-4 --model.dim=128

A config file is plain Python that assigns names (`lr = 3e-4`, `model = dict(dim=128)`); only names that
match a field of the script's dataclass are allowed. A field whose type is itself a dataclass (the model's
config) takes a dict in the file and dotted keys on the command line. Anything unknown or of the wrong type
is a ConfigError whose one-line message names the key and where it came from.
"""
import ast
import dataclasses
import math
import os
import runpy
import typing


class ConfigError(ValueError):
    pass


def _type_name(typ):
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def _coerce(value, typ, key, where):
    """Check `value` against the annotation `typ`; return it (ints widened to float where a float is wanted)."""
    bad = ConfigError(f"{where}: config key '{key}' expects {_type_name(typ)}, got {value!r} ({type(value).__name__})")
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is typing.Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        for option in args:  # Optional[X] and X | None
            try:
                return _coerce(value, option, key, where)
            except ConfigError:
                pass
        raise bad
    if typ is type(None):
        if value is None:
            return None
        raise bad
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: config key '{key}' must be one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise bad
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], key, where) for v in value]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise bad
            items = [_coerce(v, t, key, where) for v, t in zip(value, args)]
        else:
            items = [_coerce(v, args[0], key, where) for v in value] if args else list(value)
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = args if args else (typing.Any, typing.Any)
        return {_coerce(k, kt, key, where): _coerce(v, vt, key, where) for k, v in value.items()}
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: config key '{key}' must be a finite number, got {value!r}")
            return float(value)
        raise bad
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if isinstance(typ, type):
        if isinstance(value, typ):
            return value
        raise bad
    return value


def _parse_cli_value(text, typ):
    """A command-line string becomes a Python literal; a string field keeps the text as it is."""
    if typ is str or (typing.get_origin(typ) is typing.Union and str in typing.get_args(typ) and text != "None"):
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)  # literals only: never evaluates code
    except (ValueError, SyntaxError):
        return text


def _set(cfg, dotted_key, value, where, from_cli):
    """Set cfg.a.b = value, checking the key exists and the value has the annotated type."""
    obj, parts = cfg, dotted_key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(type(obj))
        if part not in hints:
            prefix = ".".join(parts[:i])
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{where}: unknown config key '{dotted_key}'"
                              + (f" ({prefix} has: {known})" if prefix else ""))
        typ = hints[part]
        if i < len(parts) - 1:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{where}: config key '{'.'.join(parts[:i + 1])}' has no sub-keys")
            continue
        if dataclasses.is_dataclass(typ):
            if from_cli:
                raise ConfigError(f"{where}: config key '{dotted_key}' is a group; set its fields as "
                                  f"--{dotted_key}.FIELD=VALUE")
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: config key '{dotted_key}' expects a dict of its fields, got {value!r}")
            for sub_key, sub_value in value.items():
                _set(cfg, f"{dotted_key}.{sub_key}", sub_value, where, from_cli)
            return
        if from_cli and isinstance(value, str):
            value = _parse_cli_value(value, typ)
        setattr(obj, part, _coerce(value, typ, dotted_key, where))


def load_config(cls, argv):
    """argv = [CONFIG.py] [--key=value ...]  ->  an instance of the dataclass `cls`."""
    cfg = cls()
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise ConfigError(f"command line: '{arg}' must be written --key=value")
            key, text = arg[2:].split("=", 1)
            _set(cfg, key, text, "command line", from_cli=True)
        else:
            if not os.path.isfile(arg):
                raise ConfigError(f"config file not found: {arg}")
            try:
                # The config file is the user's own Python (as in nanoGPT), never model output.
                names = runpy.run_path(arg)
            except Exception as e:
                raise ConfigError(f"{arg}: {type(e).__name__}: {e}") from None
            fields = typing.get_type_hints(cls)
            for key, value in names.items():
                if key.startswith("_") or isinstance(value, type(os)):
                    continue  # imports and dunders are not settings
                if callable(value):
                    if key in fields:  # `lr = lambda: 1e-3` would otherwise be ignored without a word
                        raise ConfigError(f"{arg}: config key '{key}' is set to a {type(value).__name__}; "
                                          "a config file assigns plain values")
                    continue  # a helper function of the file's own
                _set(cfg, key, value, arg, from_cli=False)
    return cfg


def require(ok, key, message):
    """A config check: raise ConfigError naming the key unless `ok`."""
    if not ok:
        raise ConfigError(f"config key '{key}' {message}")


def check_ranges(cfg, positive=(), non_negative=(), fractions=(), prefix=""):
    """Range checks for a config's numeric keys: >= 1 (or > 0 for floats), >= 0, within [0, 1]."""
    for key in positive:
        value = getattr(cfg, key)
        require(value > 0 if isinstance(value, float) else value >= 1, prefix + key,
                f"must be {'> 0' if isinstance(value, float) else '>= 1'}, got {value!r}")
    for key in non_negative:
        require(getattr(cfg, key) >= 0, prefix + key, f"must be >= 0, got {getattr(cfg, key)!r}")
    for key in fractions:
        require(0 <= getattr(cfg, key) <= 1, prefix + key, f"must be in [0, 1], got {getattr(cfg, key)!r}")


def flatten(values, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1} (a nested config dict as dotted keys)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and key != "tasks":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_diff(saved, current, keys):
    """The dotted keys matching `keys` (a predicate) whose values differ between two config dicts
    -> ['key: saved -> current', ...]. Lists and tuples compare equal (a checkpoint stores tuples as lists)."""
    a, b = flatten(saved), flatten(current)
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if keys(k) and norm(a.get(k)) != norm(b.get(k))]


def config_to_dict(cfg):
    return dataclasses.asdict(cfg)


def config_from_dict(cls, values):
    """Rebuild a config saved with config_to_dict (e.g. from a checkpoint), ignoring keys since removed."""
    cfg = cls()
    for key, value in values.items():
        hints = typing.get_type_hints(cls)
        if key not in hints:
            continue
        if dataclasses.is_dataclass(hints[key]):
            setattr(cfg, key, config_from_dict(hints[key], value))
        else:
            setattr(cfg, key, _coerce(value, hints[key], key, "checkpoint"))
    return cfg
