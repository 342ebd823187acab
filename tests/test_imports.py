"""No import circles among the project's modules, imports inside functions included."""

import textwrap

from import_graph import build_graph, report


def test_no_module_imports_itself_back():
    graph = build_graph()
    assert graph.circles() == [], "import circles:\n" + report(graph)
    # Importing a module first runs its packages' __init__ files: no circle through them either.
    assert graph.circles(with_packages=True) == [], "import circles:\n" + report(graph, with_packages=True)


def test_the_graph_sees_imports_in_functions_and_skips_type_checking_ones(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    files = {
        "__init__.py": "",
        "low.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.high import High
            def build():
                from . import mid
        """,
        "mid.py": "from pkg.low import build\n",
        "high.py": "import pkg.mid\n",
    }
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text))
    graph = build_graph(tmp_path, ("pkg",))
    assert graph.circles() == [["pkg.low", "pkg.mid"]]  # the function's import closes it; high's does not
    assert [(imp.source, imp.target) for imp in graph.function_level()] == [("pkg.low", "pkg.mid")]


def test_with_packages_an_import_runs_the_packages_above_its_module(tmp_path):
    # pkg.train.schedules runs pkg/train/__init__.py first, which imports the loop, which imports
    # evaluation back; the packages the importer lies in are running already and add nothing.
    files = {
        "pkg/__init__.py": "",
        "pkg/train/__init__.py": "from pkg.train.loop import run\n",
        "pkg/train/loop.py": "import pkg.evaluation\nfrom pkg.train.schedules import cosine\n",
        "pkg/train/schedules.py": "",
        "pkg/evaluation.py": "from pkg.train.schedules import cosine\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = build_graph(tmp_path, ("pkg",))
    assert graph.circles() == []
    assert graph.circles(with_packages=True) == [["pkg.evaluation", "pkg.train", "pkg.train.loop"]]
