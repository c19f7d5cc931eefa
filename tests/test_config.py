import pytest

from tdrm_cli.config import build_config, load_yaml
from tdrm_cli.configs.train import SFTConfig
from tdrm_cli.errors import UsageError


def test_precedence_defaults_yaml_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 16\nlearning-rate: 0.01\nepochs: 3\n")
    cfg = build_config(SFTConfig, load_yaml(path), {"epochs": 5.0, "seed": None}, source=str(path))
    assert cfg.batch_size == 16  # from YAML
    assert cfg.learning_rate == 0.01  # YAML, dashed key accepted
    assert cfg.epochs == 5.0  # flag beats YAML
    assert cfg.seed == 0  # default, flag not given
    assert cfg.layers == SFTConfig().layers


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 16\nbogus_key: 1\n")
    with pytest.raises(UsageError, match=r"c\.yaml: unknown key 'bogus_key'"):
        build_config(SFTConfig, load_yaml(path), {}, source=str(path))


def test_wrong_type_and_bad_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: lots\n")
    with pytest.raises(UsageError, match="batch_size.*expected int"):
        build_config(SFTConfig, load_yaml(path), {}, source=str(path))
    path.write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_yaml(path)
    with pytest.raises(UsageError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_int_accepted_for_float_and_validation():
    cfg = build_config(SFTConfig, {"learning_rate": 1}, {})
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    with pytest.raises(UsageError, match="--batch-size must be > 0"):
        build_config(SFTConfig, {}, {"batch_size": 0})
    with pytest.raises(UsageError, match="exclude each other"):
        build_config(SFTConfig, {}, {"resume": True, "overwrite": True})
