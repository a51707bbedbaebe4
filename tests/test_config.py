"""Configuration: strict loading, errors that name key and file, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clickgraph.core.config import Config, ConfigError, default_config_path, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MINIMAL = "paths:\n  root: /tmp/x\nspark:\n  master: local[2]\n"


def test_embedded_default_is_conf_local_yaml():
    assert default_config_path() == REPO / "conf" / "local.yaml"
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.spark.master == "local[*]"
    assert cfg.ray.address is None and cfg.ray.dashboard_host == "127.0.0.1"
    for stage in ("logs", "graph", "partitions", "train", "eval", "embeddings"):
        assert cfg.paths.stage(stage) == f"runs/local/{stage}"


def test_local_yaml_lists_every_key_with_its_default():
    """conf/local.yaml documents every key; its values are the dataclass defaults."""
    raw = yaml.safe_load((REPO / "conf" / "local.yaml").read_text())
    cfg = load_config()
    for section in ("generate", "spark", "ray", "train", "graph", "partition"):
        assert set(raw[section]) == set(cfg.to_dict()[section]), section


def test_minimal_file_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.paths.stage("graph") == "/tmp/x/graph"
    assert cfg.generate.num_days == 21


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, MINIMAL + "generate:\n  num_userz: 5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key 'generate\.num_userz'"):
        load_config(path)


def test_unknown_section_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key 'trianing'"):
        load_config(write(tmp_path, MINIMAL + "trianing: {}\n"))


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, MINIMAL + "generate:\n  num_users: lots\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*'generate\.num_users'.*integer"):
        load_config(path)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="generate.num_days"):
        load_config(write(tmp_path, MINIMAL + "generate:\n  num_days: true\n"))


def test_list_elements_are_checked(tmp_path):
    path = write(tmp_path, MINIMAL + "generate:\n  formats: [json, csv]\n")
    with pytest.raises(ConfigError, match=r"generate\.formats\[1\].*'csv'"):
        load_config(path)


def test_missing_required_value_names_key_and_file(tmp_path):
    path = write(tmp_path, "paths:\n  root: /tmp/x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*missing required key 'spark'"):
        load_config(path)
    path = write(tmp_path, "paths: {}\nspark:\n  master: local\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*missing required key 'paths\.root'"):
        load_config(path)


def test_range_checks(tmp_path):
    with pytest.raises(ConfigError, match="generate.bad_row_fraction"):
        load_config(write(tmp_path, MINIMAL + "generate:\n  bad_row_fraction: 0.9\n"))
    with pytest.raises(ConfigError, match="generate.start_date"):
        load_config(write(tmp_path, MINIMAL + "generate:\n  start_date: March\n"))


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml.*cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="c.yaml.*invalid YAML"):
        load_config(write(tmp_path, "paths: [\n"))


def test_set_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["generate.num_days=3", "generate.formats=[parquet]"])
    assert cfg.generate.num_days == 3 and cfg.generate.formats == ["parquet"]
    with pytest.raises(ConfigError, match=r"--set generate\.num_dayz=3.*unknown key 'generate\.num_dayz'"):
        load_config(write(tmp_path, MINIMAL), ["generate.num_dayz=3"])
    with pytest.raises(ConfigError, match="generate.num_days.*integer"):
        load_config(write(tmp_path, MINIMAL), ["generate.num_days=three"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(write(tmp_path, MINIMAL), ["generate.num_days"])


def test_config_is_frozen_and_hash_is_stable():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.generate.seed = 3  # type: ignore[misc]
    assert cfg.section_hash("generate") == load_config().section_hash("generate")
    other = load_config(None, ["generate.seed=8"])
    assert other.section_hash("generate") != cfg.section_hash("generate")
    assert other.section_hash("spark") == cfg.section_hash("spark")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["generate.num_days=5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path).to_dict() == cfg.to_dict()


def test_every_yaml_under_conf_and_k8s_parses():
    files = sorted(REPO.glob("conf/**/*.yaml")) + sorted(REPO.glob("k8s/**/*.yaml"))
    assert REPO / "conf" / "cluster.example.yaml" in files
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs, path
    for path in REPO.glob("conf/*.yaml"):
        load_config(path)  # every shipped config is also valid


def test_item_share_of_the_diversity_control_is_a_share(tmp_path):
    body = MINIMAL + "evaluate:\n  diversity:\n    max_item_share: 1.5\n"
    with pytest.raises(ConfigError, match=r"evaluate\.diversity\.max_item_share"):
        load_config(write(tmp_path, body))
