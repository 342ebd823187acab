"""cssl_core is plain PyTorch: it imports and trains with the service's packages blocked."""

import subprocess
import sys
import textwrap

from import_graph import build_graph

SERVICE_PACKAGES = ("api", "store", "worker", "dispatch", "cli")


def test_core_runs_without_web_database_or_queue_packages(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "celery", "kombu",
                   "redis", "api", "worker", "store", "cli")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"cssl_core must not import {{name}}")

        sys.meta_path.insert(0, Block())
        import pkgutil, importlib, cssl_core
        for mod in pkgutil.walk_packages(cssl_core.__path__, "cssl_core."):
            if not mod.name.endswith(".bench"):
                importlib.import_module(mod.name)
        from cssl_core.config import build_config
        from cssl_core.train import pretrain
        config = build_config("simclr", {{"dataset": "synthetic", "backbone": "small", "epochs": 1,
                                          "batch_size": 64, "subset": 128}})
        print(pretrain(config, {str(tmp_path)!r}).stopped)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("completed")


def test_no_core_module_names_a_service_module_even_inside_a_function():
    # The run above loads every module but runs only the functions training calls; the source
    # shows the imports of the rest (evaluation, export) too.
    graph = build_graph()
    found = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in graph.imports
        if imp.source.split(".")[0] == "cssl_core" and imp.target.split(".")[0] in SERVICE_PACKAGES
    ]
    assert found == []


def test_the_api_imports_no_worker_code():
    # The API publishes and sweeps through ``dispatch``; the worker's runner and tasks (and
    # the model code they load) stay out of the API process.
    script = textwrap.dedent("""
        import sys
        from api.main import create_app
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "worker")
        print(loaded)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
