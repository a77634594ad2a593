import dataclasses

import pytest

from nanor1.config import ConfigError, config_from_dict, config_to_dict, load_config


@dataclasses.dataclass
class Inner:
    dim: int = 64
    theta: float = 10000.0


@dataclasses.dataclass
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    name: str = "run"
    compile: bool = False
    tasks: dict[str, float] = dataclasses.field(default_factory=lambda: {"arithmetic": 1.0})
    sizes: tuple[int, ...] = (3, 4)
    init_from: str | None = None
    model: Inner = dataclasses.field(default_factory=Inner)


def test_defaults_file_then_overrides(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nlr = 3e-4\nsteps = 2 * 50\nmodel = dict(dim=128)\ntasks = {'countdown': 1}\n"
                 "_private = 1\n")
    cfg = load_config(Cfg, [str(f), "--steps=7", "--model.theta=500", "--name=abc", "--compile=true",
                            "--sizes=(1,2)", "--init_from=out/x"])
    assert cfg.lr == 3e-4 and cfg.steps == 7 and cfg.model.dim == 128 and cfg.model.theta == 500.0
    assert cfg.tasks == {"countdown": 1.0} and cfg.name == "abc" and cfg.compile is True
    assert cfg.sizes == (1, 2) and cfg.init_from == "out/x"
    assert isinstance(cfg.model.theta, float)  # int widened to float


def test_round_trip_through_dict():
    cfg = load_config(Cfg, ["--model.dim=32", "--lr=0.5"])
    assert config_from_dict(Cfg, config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("argv, fragment", [
    (["--stepz=3"], "unknown config key 'stepz'"),
    (["--model.dimm=3"], "unknown config key 'model.dimm'"),
    (["--steps=abc"], "config key 'steps' expects int"),
    (["--steps=1.5"], "config key 'steps' expects int"),
    (["--lr=fast"], "config key 'lr' expects float"),
    (["--compile=3"], "config key 'compile' expects bool"),
    (["--sizes=(1,'a')"], "config key 'sizes'"),
    (["--model=3"], "config key 'model' is a group"),
    (["--steps"], "must be written --key=value"),
    (["no_such_file.py"], "config file not found: no_such_file.py"),
])
def test_bad_input_is_one_line_error_naming_the_key(argv, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, argv)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_file_names_file_and_key(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("steps = 'ten'\n")
    with pytest.raises(ConfigError, match=r"bad.py: config key 'steps' expects int"):
        load_config(Cfg, [str(f)])
    f.write_text("learning_rate = 1\n")
    with pytest.raises(ConfigError, match=r"bad.py: unknown config key 'learning_rate'"):
        load_config(Cfg, [str(f)])
    f.write_text("model = dict(dim='big')\n")
    with pytest.raises(ConfigError, match=r"config key 'model.dim' expects int"):
        load_config(Cfg, [str(f)])
    f.write_text("steps = (\n")
    with pytest.raises(ConfigError, match=r"bad.py: SyntaxError"):
        load_config(Cfg, [str(f)])
