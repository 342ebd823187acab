"""Config files in YAML and JSON: the same validation as every other way in, errors that name
the line, ``--print-config`` output that reads back as the same config, and ``configs/``,
one paper recipe per method, as ``scripts/write_configs.py`` writes it."""

import importlib.util
import json
from pathlib import Path

import pytest

from cli.main import main as cssl
from cssl_core.config import build_config
from cssl_core.configfile import dump_config_yaml, load_yaml, read_config_file
from cssl_core.errors import ConfigError
from cssl_core.methods import get_method, method_names

ROOT = Path(__file__).resolve().parent.parent


def print_config(capsys, *argv: str) -> str:
    assert cssl(["pretrain", *argv, "--print-config"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def error_of(capfd, *argv: str) -> str:
    assert cssl(["pretrain", *argv]) == 2
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    return captured.err.removeprefix("cssl: error: ").strip()


@pytest.mark.parametrize("method", method_names())
def test_printed_config_read_back_is_the_same_config(method, capsys, tmp_path):
    printed = print_config(capsys, "--method", method, "--dataset", "synthetic", "--set", "seed=7")
    values = load_yaml(printed)
    assert values == json.loads(json.dumps(build_config(method, {"dataset": "synthetic", "seed": 7}).to_dict()))
    (tmp_path / "run.yaml").write_text(printed)
    # The file names the method, so --method may be left out.
    assert print_config(capsys, "--config", str(tmp_path / "run.yaml")) == printed
    assert build_config(method, read_config_file(tmp_path / "run.yaml")) == build_config(method, values)


def test_a_vit_and_evaluation_parameters_survive_the_round_trip(capsys, tmp_path):
    (tmp_path / "job.yml").write_text("method: dino\nbackbone: vit_tiny\nknn:\n  k: '20'\nlinear: {epochs: 5}\n")
    printed = print_config(capsys, "--config", str(tmp_path / "job.yml"), "--dataset", "synthetic")
    values = load_yaml(printed)
    assert values["knn"] == {"k": 20} and values["linear"] == {"epochs": 5}  # typed, kept as given
    assert values["optimizer"] == "adamw" and values["backbone"] == "vit_tiny"  # DINO's ViT values
    (tmp_path / "again.yaml").write_text(printed)
    assert print_config(capsys, "--config", str(tmp_path / "again.yaml")) == printed


def test_json_config_files_read_as_before(capsys, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "synthetic", "temperature": 0.3}))
    printed = print_config(capsys, "--method", "simclr", "--config", str(tmp_path / "run.json"))
    assert load_yaml(printed)["temperature"] == 0.3


def test_options_and_set_override_the_file(capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("method: simclr\ndataset: synthetic\nepochs: 3\ntemperature: 0.3\n")
    printed = print_config(capsys, "--config", str(tmp_path / "run.yaml"), "--epochs", "5", "--set", "temperature=0.4")
    assert load_yaml(printed)["epochs"] == 5 and load_yaml(printed)["temperature"] == 0.4


@pytest.mark.parametrize(
    "name, text, error",
    [
        (
            "run.yaml",
            "dataset: synthetic\ntemprature: 0.2\n",
            "unknown option(s) for method 'simclr': temprature (did you mean temperature?); valid options: ",
        ),
        ("run.yaml", "dataset: synthetic\nepochs: 0\n", "epochs must be in [1, 100000], got 0"),
        ("run.yaml", "dataset: synthetic\ntemperature: .nan\n", "temperature must be a finite number, got nan"),
        ("run.yaml", "dataset: synthetic\nepochs: three\n", "epochs must be of type int, got 'three'"),
        (
            "run.yaml",
            "dataset: synthetic\n  epochs: 3\n",
            "config file {path} is not valid YAML: line 2, column 9: mapping values are not allowed",
        ),
        ("run.yml", "epochs: [1, 2\nseed: 0\n", "config file {path} is not valid YAML: line 2, column 5: "),
        (
            "run.yaml",
            "- epochs: 3\n",
            "config file {path} holds a list, not a mapping of config keys (key: value lines)",
        ),
        ("run.yaml", "# nothing yet\n", "config file {path} holds nothing, not a mapping of config keys"),
        (
            "run.yaml",
            "epochs: 1\n---\nepochs: 2\n",
            "config file {path} is not valid YAML: line 2, column 1: "
            "expected a single document in the stream, but found another document",
        ),
        (
            "run.yaml",
            "dataset: &d synthetic\nknn: &k {k: 5}\nlinear: *k\n",
            "config file {path} is not valid YAML: YAML anchors and aliases (&name, *name) are not accepted at linear",
        ),
        (
            "run.yaml",
            "seed: 2026-12-06\n",
            "config file {path} is not valid YAML: YAML value datetime.date(2026, 12, 6) "
            "at seed is of type date, which a config cannot hold: quote it for a string",
        ),
        (
            "run.yaml",
            "x: !!python/object/apply:os.system [echo]\n",
            "config file {path} is not valid YAML: line 1, column 4: could not determine a constructor for the tag",
        ),
        ("run.json", '{"epochs": 1,}', "config file {path} is not valid JSON: line 1, column 14: "),
        ("run.json", "[1]", "config file {path} holds a list, not a mapping of config keys (a JSON object)"),
        ("run.yaml", "method: byol\n", "--method simclr differs from the method 'byol' of --config {path}; give one"),
        ("run.yaml", "knn: 20\n", "knn takes an object of its parameters"),
    ],
)
def test_a_bad_file_is_one_line_that_says_where(capfd, tmp_path, name, text, error):
    path = tmp_path / name
    path.write_text(text)
    message = error_of(capfd, "--method", "simclr", "--config", str(path), "--out", str(tmp_path / "run"))
    assert message.startswith(error.format(path=path)), message
    assert not (tmp_path / "run").exists()


def test_without_method_anywhere_the_error_says_where_to_give_it(capfd, tmp_path):
    (tmp_path / "run.yaml").write_text("dataset: synthetic\n")
    assert error_of(capfd, "--config", str(tmp_path / "run.yaml")) == (
        "pretrain needs --method, or a --config file with a method key"
    )
    assert error_of(capfd, "--config", str(tmp_path / "missing.yaml")).startswith(
        f"could not read config file {tmp_path / 'missing.yaml'}: "
    )


def test_yaml_keeps_to_the_values_json_has():
    assert load_yaml("a: 1\nb: [0.08, 1.0]\nc: null\nd: 'no'\ne: no\nf: 1.0e-06\n") == {
        "a": 1,
        "b": [0.08, 1.0],
        "c": None,
        "d": "no",
        "e": False,
        "f": 1e-06,
    }
    for text in ("1: a", "a: !!binary aGk=", "a: !!set {x}"):
        with pytest.raises(ConfigError, match="quote it"):
            load_yaml(text)
    for depth in (999, 1000, 5000):  # libyaml's limit is 1,000; Python's recursion nearly so
        with pytest.raises(ConfigError, match="nest"):
            load_yaml("a: " + "[" * depth + "]" * depth)
    # Ten levels of nine aliases each stand for a billion strings; refused before anything walks them.
    laughs = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    with pytest.raises(ConfigError, match="aliases"):
        load_yaml(laughs)


def test_dumped_config_reads_back_with_tuples_as_lists():
    values = {"crop": (0.08, 1.0), "small": 1e-6, "text": "yes", "nested": {"k": 20}, "none": None}
    assert load_yaml(dump_config_yaml(values)) == {**values, "crop": [0.08, 1.0]}


def load_write_configs():
    spec = importlib.util.spec_from_file_location("write_configs", ROOT / "scripts" / "write_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_holds_one_valid_paper_recipe_per_method_as_the_script_writes_it():
    files = sorted((ROOT / "configs").glob("*"))
    assert [path.name for path in files] == [f"{method}.yaml" for method in method_names()]
    written = load_write_configs().expected_files()
    for path in files:
        assert path.read_text() == written[path], f"{path.name}: run python scripts/write_configs.py"
        values = read_config_file(path)
        config = build_config(values["method"], values)
        assert json.loads(json.dumps(config.to_dict())) == values
        assert config.recipe == "paper" and config.image_size == 224
        assert f"\n# arXiv:{get_method(config.method).arxiv} " in path.read_text()
