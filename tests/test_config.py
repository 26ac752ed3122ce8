from __future__ import annotations

import pytest
from pydantic import ValidationError

from nnforge.adapt import LoraConfig
from nnforge.config import load_config
from nnforge.errors import ConfigError
from nnforge.registry import Registry


def test_config_error_names_field_and_value():
    with pytest.raises(ConfigError) as exc:
        LoraConfig(r=0)
    msg = str(exc.value)
    assert "'r'" in msg and "LoraConfig" in msg and "Got 0" in msg


def test_unknown_field_is_rejected():
    with pytest.raises(ConfigError, match="rank: unknown field"):
        LoraConfig(rank=8)


def test_config_round_trip_through_registry():
    cfg = LoraConfig(r=4, alpha=8)
    doc = cfg.to_dict()
    assert doc["type"] == "lora" and doc["version"] == 1
    assert load_config(doc) == cfg


def test_load_config_refuses_unknown_type_and_version():
    with pytest.raises(ConfigError, match="unknown config type 'os.system'"):
        load_config({"type": "os.system", "version": 1, "data": {}})
    with pytest.raises(ConfigError, match="version"):
        load_config({"type": "lora", "version": 99, "data": {}})


def test_configs_are_frozen():
    cfg = LoraConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.r = 3  # type: ignore[misc]


def test_registry_suggests_close_name():
    reg: Registry[int] = Registry("widget")
    reg.add("quantize", 1)
    with pytest.raises(ConfigError, match=r"did you mean 'quantize'"):
        reg.get("quantise")
    with pytest.raises(ValueError):
        reg.add("quantize", 2)
