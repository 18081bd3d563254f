"""Tests of the TOML training config: parsing, unknown keys, types, paths and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def write(tmp_path: Path, text: str, name: str = "train.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
name = "t"
[data]
customers = "customers.csv"
[features]
numeric = ["a", "b"]
"""


def test_example_demo_config_loads_with_typed_sections():
    config = load_config(EXAMPLES / "demo.toml")
    assert config.name == "demo"
    assert config.features.kinds["total_spend"] == "amount"
    assert config.features.derived[0].name == "avg_order_value"
    assert config.responses.format == "long"
    assert Path(config.data.customers).is_absolute()
    assert config.data.truth_column == "true_segment"


@pytest.mark.parametrize("name", ["cc_general", "personality", "bank_marketing"])
def test_real_table_example_configs_parse(name):
    config = load_config(EXAMPLES / f"{name}.toml")
    assert config.name == name
    assert config.features.numeric


def test_bank_config_has_no_id_column_and_leaves_duration_out():
    config = load_config(EXAMPLES / "bank_marketing.toml")
    assert config.data.id_column is None
    assert "duration" not in config.features.numeric


def test_unknown_key_is_refused_with_its_name(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[segmentation]\nk_maximum = 4\n")
    with pytest.raises(ConfigError, match=r"segmentation\.k_maximum"):
        load_config(path)


def test_unknown_top_level_key_is_refused(tmp_path):
    path = write(tmp_path, "colour = 'red'\n" + MINIMAL)
    with pytest.raises(ConfigError, match="'colour'"):
        load_config(path)


def test_wrong_type_names_the_key_and_value(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[segmentation]\nk_max = 'ten'\n")
    with pytest.raises(ConfigError, match=r"segmentation.k_max: expected an integer, got 'ten'"):
        load_config(path)


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("\n[segmentation]\nk_min = 5\nk_max = 3\n", "segmentation.k_max"),
        ("\n[segmentation]\nk = 1\n", "segmentation.k"),
        ("\n[features.kinds]\na = 'money'\n", "features.kinds.a"),
        ("\n[responses]\nformat = 'wide'\n", "responses.columns"),
        ("\n[responses]\nformat = 'tall'\npath = 'r.csv'\n", "responses.format"),
        ("\n[segmentation]\npca_variance = 1.5\n", "segmentation.pca_variance"),
    ],
)
def test_inconsistent_settings_name_the_key(tmp_path, extra, key):
    text = MINIMAL.replace('numeric = ["a", "b"]', 'numeric = ["a", "b"]\n') + extra
    # [features.kinds] must follow [features]; the minimal config ends with [features]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_log_accepts_auto_or_a_list_but_not_another_word(tmp_path):
    config = config_from_dict({"data": {"customers": "c.csv"}, "features": {"log": ["a"]}})
    assert config.features.log == ("a",)
    with pytest.raises(ConfigError, match=r"features\.log"):
        config_from_dict({"data": {"customers": "c.csv"}, "features": {"log": "always"}})


def test_missing_customer_table_is_refused():
    with pytest.raises(ConfigError, match=r"data\.customers"):
        config_from_dict({"features": {"numeric": ["a"]}})


def test_relative_paths_resolve_next_to_the_config_when_absent_from_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "customers.csv").write_text("customer_id,a,b\n1,1,2\n", encoding="utf-8")
    path = write(folder, MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert Path(config.data.customers) == (folder / "customers.csv").resolve()
    assert Path(config.base_dir) == folder.resolve()


def test_relative_paths_prefer_the_working_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "customers.csv").write_text("customer_id,a\n1,1\n", encoding="utf-8")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "customers.csv").write_text("customer_id,a\n1,1\n", encoding="utf-8")
    path = write(conf_dir, MINIMAL)
    monkeypatch.chdir(cwd)
    assert Path(load_config(path).data.customers) == (cwd / "customers.csv").resolve()


def test_overrides_set_their_fields(tmp_path):
    config = load_config(
        EXAMPLES / "demo.toml",
        {
            "data_dir": str(tmp_path),
            "output": str(tmp_path / "out"),
            "k": 4,
            "k_min": 3,
            "k_max": 6,
            "seed": 7,
            "name": "renamed",
        },
    )
    assert Path(config.data.customers) == tmp_path / "customers.parquet"
    assert Path(config.responses.path) == tmp_path / "responses.parquet"
    assert Path(config.campaigns.pool) == tmp_path / "campaigns.json"
    assert config.output.root == str(tmp_path / "out")
    assert (config.segmentation.k, config.segmentation.k_min, config.segmentation.k_max) == (
        4,
        3,
        6,
    )
    assert config.segmentation.seed == config.response_model.seed == 7
    assert config.name == "renamed"


def test_none_overrides_are_ignored_and_unknown_ones_refused():
    base = load_config(EXAMPLES / "demo.toml")
    assert load_config(EXAMPLES / "demo.toml", {"k": None, "seed": None}) == base
    with pytest.raises(ConfigError, match="unknown override 'colour'"):
        load_config(EXAMPLES / "demo.toml", {"colour": "red"})


def test_customers_override_replaces_the_table(tmp_path):
    other = tmp_path / "other.csv"
    config = load_config(EXAMPLES / "demo.toml", {"customers": str(other)})
    assert Path(config.data.customers) == other
