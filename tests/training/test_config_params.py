"""Training parameters are declared once: checked on load, documented in the README from the code."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from training import config as cfg
from training.cli import main
from training.config import ConfigError, config_from_dict, config_reference, load_config

README = Path(__file__).resolve().parents[2] / "README.md"
BASE = {"data": {"customers": "customers.csv"}, "features": {"numeric": ["a", "b"]}}


def _with(section: str, key: str, value) -> dict:
    raw = {k: dict(v) for k, v in BASE.items()}
    raw.setdefault(section, {})[key] = value
    return raw


def _sections(cls=cfg.TrainConfig):
    yield cls
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        section = cfg._section(tp)
        if section is not None:
            yield from _sections(section)


def test_readme_reference_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- config-reference:start[^\n]*-->\n(.*?)<!-- config-reference:end -->", text, re.S
    )
    assert found, "README.md lost its config-reference markers"
    assert found.group(1) == config_reference(), (
        "README.md's config reference is out of date: paste the output of "
        "python -c \"from training.config import config_reference; print(config_reference(), end='')\""
    )


@pytest.mark.parametrize(
    "key",
    [
        "response_model.enabled",
        "response_model.min_child_samples",
        "response_model.max_train_rows",
        "data.transactions.date_format",
        "data.transactions.as_of",
        "responses.positive_values",
        "segmentation.search_sample",
        "features.derived[].fill",
        "clv.discount_rate",
        "uplift.min_control_rows",
        "output.report",
    ],
)
def test_every_field_is_in_the_reference(key):
    assert f"| `{key}` |" in config_reference()


def test_every_field_has_a_meaning_and_its_default_is_allowed():
    for cls in _sections():
        for f in dataclasses.fields(cls):
            if f.name == "base_dir":
                continue
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no param(doc=...)"
            allowed = f.metadata.get("allowed")
            default = cfg._default(f)
            if allowed is not None and default is not dataclasses.MISSING:
                cfg._enforce(default, allowed, f.name)  # raises if the default is refused


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("segmentation", "outlier_quantile", 1.5, "(0, 1]"),
        ("segmentation", "n_init", 0, ">= 1"),
        ("segmentation", "k", 1, ">= 2"),
        ("segmentation", "seed", -1, "[0, 2147483647]"),
        ("segmentation", "pca_variance", 0.0, "(0, 1]"),
        ("response_model", "learning_rate", -1, "(0, 1]"),
        ("response_model", "num_leaves", 0, "[2, 131072]"),
        ("response_model", "validation_fraction", 1.0, "(0, 1)"),
        ("clv", "horizon_months", 0, "[1, 1200]"),
        ("responses", "format", "tall", 'one of "long", "wide"'),
        ("data", "decimal", ",,", "one character"),
    ],
)
def test_a_bad_value_names_key_value_and_what_is_allowed(section, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_with(section, key, value))
    message = str(err.value)
    assert message.startswith(f"{section}.{key}: {value!r}")
    assert message.endswith(f"expected {allowed}")


def test_each_item_of_a_list_or_table_is_checked():
    with pytest.raises(
        ConfigError, match=r"features.kinds.b: 'money' is not allowed; expected one of"
    ):
        config_from_dict(_with("features", "kinds", {"a": "amount", "b": "money"}))


def test_unknown_key_is_refused_with_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"unknown key 'segmentation.n_inits'; known keys here: k, "
    ):
        config_from_dict(_with("segmentation", "n_inits", 3))


def test_a_dotted_column_name_left_unquoted_gets_a_toml_hint(tmp_path):
    path = tmp_path / "bank.toml"
    path.write_text(
        '[data]\ncustomers = "bank.csv"\n[features]\nnumeric = ["emp.var.rate"]\n'
        '[features.kinds]\nemp.var.rate = "numeric"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith("features.kinds.emp: expected a string, got a table")
    assert '"emp.var.rate" is one column name, quote it: "emp.var.rate" = \'numeric\'' in message
    # quoted, it loads
    path.write_text(path.read_text().replace("emp.var.rate = ", '"emp.var.rate" = '))
    assert load_config(path).features.kinds == {"emp.var.rate": "numeric"}


def test_the_cli_stops_before_reading_any_file(tmp_path, capsys):
    # the customer file does not exist: a bad parameter must be reported first, not the file
    path = tmp_path / "bad.toml"
    path.write_text(
        '[data]\ncustomers = "absent.csv"\n[features]\nnumeric = ["a"]\n'
        "[response_model]\nnum_leaves = 0\n"
    )
    assert main(["-q", "train", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: response_model.num_leaves: 0 is not allowed; expected [2, 131072]"
    assert not (tmp_path / "out").exists()
