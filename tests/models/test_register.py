"""nnforge.models.register and the ``nnforge.models`` entry points of installed packages."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from nnforge import models
from nnforge.errors import ConfigError


def _tiny(**options):
    return torch.nn.Linear(options.get("features", 4), options.get("num_classes", 3))


@pytest.fixture
def clean_registry():
    """Architectures registered by a test are removed after it; entry points are looked up again."""
    before = set(models.ARCHITECTURES._entries)
    models.ARCHITECTURES.refresh_entry_points()
    yield
    for name in set(models.ARCHITECTURES._entries) - before:
        models.unregister(name)
    models.ARCHITECTURES.refresh_entry_points()


def test_register_makes_a_buildable_name_with_task_and_data_kind(clean_registry):
    models.register("tiny-table", _tiny, task="tabular-classification")
    assert isinstance(models.build("tiny-table", features=5), torch.nn.Linear)
    assert models.build("tiny-table", features=5).in_features == 5
    assert models.TASKS["tiny-table"] == "tabular-classification"
    assert models.DATA_KINDS["tiny-table"] == "array-classification"
    assert models.task_of("tiny-table") == "tabular-classification"
    assert models.task_of("digits-cnn") == "image-classification"
    assert models.task_of(None) == "text-classification"


def test_reregistering_needs_replace(clean_registry):
    models.register("tiny", _tiny, task="tensor-classification")
    with pytest.raises(ConfigError, match="already registered.*replace=True"):
        models.register("tiny", lambda **o: torch.nn.Linear(2, 2))
    models.register("tiny", _tiny)  # the same factory again is not a clash
    other = lambda **o: torch.nn.Linear(2, 7)  # noqa: E731
    models.register("tiny", other, task="image-classification", replace=True)
    assert models.build("tiny").out_features == 7
    assert models.TASKS["tiny"] == "image-classification"
    with pytest.raises(ConfigError, match="already registered"):
        models.register("digits-cnn", _tiny)


def test_register_as_a_decorator(clean_registry):
    @models.register("tiny-deco", task="image-classification")
    def build(**options):
        return torch.nn.Linear(3, 2)

    assert models.build("tiny-deco").out_features == 2
    assert callable(build)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "bad name", "factory": _tiny}, "name must be"),
    ({"name": "x1", "factory": 3}, "must be callable"),
    ({"name": "x1", "factory": _tiny, "task": "regression"}, "unknown task 'regression'"),
    ({"name": "x1", "factory": _tiny, "data_kind": "audio"}, "unknown data_kind 'audio'"),
])
def test_register_refuses_bad_arguments(clean_registry, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        models.register(**kwargs)


def test_a_registered_name_passes_recipe_validation_and_a_typo_names_register(clean_registry):
    from nnforge.recipes.schema import parse_recipe

    models.register("tiny-img", _tiny, task="image-classification")
    doc = {"name": "t", "model": {"architecture": "tiny-img"}, "data": {"dataset": "digits"}, "steps": ["report"]}
    assert parse_recipe(doc).model.architecture == "tiny-img"
    with pytest.raises(ConfigError, match="did you mean 'tiny-img'.*nnforge.models.register"):
        parse_recipe({**doc, "model": {"architecture": "tiny-imgg"}})
    models.register("tiny-lm", _tiny, task="char-lm")
    with pytest.raises(ConfigError, match="reads char-lm data"):
        parse_recipe({**doc, "model": {"architecture": "tiny-lm"}})


def _fake_distribution(root, entry_points: str, module: str) -> None:
    (root / "fakepkg_nnf").mkdir()
    (root / "fakepkg_nnf" / "__init__.py").write_text(textwrap.dedent(module))
    info = root / "fakepkg_nnf-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg-nnf\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[nnforge.models]\n" + textwrap.dedent(entry_points))


@pytest.fixture
def fake_dist(tmp_path, monkeypatch, clean_registry):
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("fakepkg_nnf", None)


def test_entry_points_are_discovered_and_loaded_on_first_use(fake_dist):
    _fake_distribution(fake_dist, """\
        fake-tab = fakepkg_nnf:build_tab
        fake-cnn = fakepkg_nnf:build_cnn
        """, """\
        import torch
        import nnforge.models

        LOADED = []

        def build_tab(**options):
            return torch.nn.Linear(4, 3)
        build_tab.nnforge_task = "tabular-classification"

        @nnforge.models.register("fake-cnn", task="image-classification")
        def build_cnn(**options):
            return torch.nn.Conv2d(1, 2, 3)
        """)
    models.ARCHITECTURES.refresh_entry_points()
    assert {"fake-tab", "fake-cnn"} <= set(models.ARCHITECTURES.names())
    assert "fakepkg_nnf" not in sys.modules  # listed, not imported
    assert isinstance(models.build("fake-tab"), torch.nn.Linear)
    assert models.TASKS["fake-tab"] == "tabular-classification"
    assert "fake-cnn" in models.ARCHITECTURES  # registered by its module's own register() call
    assert models.TASKS["fake-cnn"] == "image-classification"


def test_a_broken_entry_point_names_its_distribution_without_a_traceback(fake_dist):
    _fake_distribution(fake_dist, """\
        fake-broken = fakepkg_nnf.missing_module:build
        fake-notcallable = fakepkg_nnf:VALUE
        """, "VALUE = 3\n")
    models.ARCHITECTURES.refresh_entry_points()
    assert "digits-cnn" in models.ARCHITECTURES  # other architectures still work
    with pytest.raises(ConfigError) as err:
        models.build("fake-broken")
    msg = str(err.value)
    assert "fake-broken = fakepkg_nnf.missing_module:build" in msg and "fakepkg-nnf 1.2" in msg
    assert "ModuleNotFoundError" in msg and err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(ConfigError, match="fakepkg-nnf 1.2"):  # the same answer on the next lookup
        _ = "fake-broken" in models.ARCHITECTURES
    with pytest.raises(ConfigError, match="names a int, not a factory"):
        models.build("fake-notcallable")


def test_a_broken_entry_point_in_a_recipe_is_a_recipe_problem(fake_dist):
    from nnforge.recipes.schema import parse_recipe

    _fake_distribution(fake_dist, "fake-broken = fakepkg_nnf.nope:build\n", "")
    models.ARCHITECTURES.refresh_entry_points()
    doc = {"name": "t", "model": {"architecture": "fake-broken"}, "data": {"dataset": "digits"}, "steps": ["report"]}
    with pytest.raises(ConfigError, match="distribution 'fakepkg-nnf 1.2'"):
        parse_recipe(doc)
