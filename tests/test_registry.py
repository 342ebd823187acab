"""The method registry: filled where each class is defined, found without a list, and the
README's method table kept to it."""

import re
import sys
import types
from pathlib import Path

import pytest

from cssl_core.errors import ConfigError
from cssl_core.methods import get_method, method_names
from cssl_core.registry import Registry

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A fresh package ``widgets`` on the path whose modules register into ``host.REGISTRY``."""
    registry = Registry("widget", "widgets")
    host = types.ModuleType("widgets_host")
    host.REGISTRY = registry
    monkeypatch.setitem(sys.modules, "widgets_host", host)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "widgets").mkdir()
    (tmp_path / "widgets" / "__init__.py").write_text("")
    yield registry, tmp_path / "widgets"
    for name in [m for m in sys.modules if m == "widgets" or m.startswith("widgets.")]:
        del sys.modules[name]


def widget(class_name, name):
    return f"from widgets_host import REGISTRY\n\n@REGISTRY.register\nclass {class_name}:\n    name = {name!r}\n"


def test_a_new_module_is_found_without_being_listed(plugin_package):
    registry, folder = plugin_package
    (folder / "alpha.py").write_text(widget("Alpha", "Alpha"))
    (folder / "helpers.py").write_text("SIZE = 3\n")  # a module that registers nothing is fine
    assert registry.names() == ["alpha"]
    assert registry.get("ALPHA").__module__ == "widgets.alpha"


def test_an_unknown_name_lists_the_known_ones(plugin_package):
    registry, folder = plugin_package
    (folder / "alpha.py").write_text(widget("Alpha", "alpha"))
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah' \(did you mean alpha\?\); known widgets: alpha"):
        registry.get("alpah")


def test_two_classes_may_not_share_a_name(plugin_package):
    registry, folder = plugin_package
    (folder / "alpha.py").write_text(widget("Alpha", "alpha"))
    (folder / "beta.py").write_text(widget("Beta", "alpha"))
    with pytest.raises(ValueError, match="widget name 'alpha' is taken by widgets.alpha.Alpha"):
        registry.names()


def readme_methods() -> dict[str, str]:
    """The README's method table: name -> its paper column."""
    section = README.read_text().split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.MULTILINE))


def test_the_readme_lists_every_registered_method_with_its_paper():
    table = readme_methods()
    assert sorted(table) == method_names()
    wrong = {name: paper for name, paper in table.items() if f"arXiv {get_method(name).arxiv}" not in paper}
    assert wrong == {}
