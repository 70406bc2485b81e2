"""The cluster file: every broken file gets one line naming the field, exit 2, nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import cli, write_cluster
from vent_bake import config, example

BROKEN = sorted((Path(__file__).parent / "broken").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with its expected message"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_large_enough():
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_cluster_file(path, tmp_path):
    out, state = tmp_path / "artifacts", tmp_path / "state"
    result = cli("render", "-c", path, "--out", out, "--state", state)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {path}: {expected(path)}\n"
    assert not out.exists() and not state.exists()


def test_error_is_one_line_without_traceback_from_the_real_command(tmp_path):
    path = Path(__file__).parent / "broken" / "duplicate-hostname.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "vent_bake", "render", "-c", str(path), "--out", str(tmp_path / "a")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_missing_cluster_file(tmp_path):
    result = cli("render", "-c", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "no such file; `vent-bake init` writes an example there" in result.stderr


def test_even_controller_count_is_a_warning(tmp_path):
    result = cli("render", "-c", write_cluster(tmp_path, controllers=2, workers=0))
    assert result.exit_code == 0
    assert "warning: controllers: 2 controllers tolerate no more failures than 1" in result.stderr


def test_node_images_over_plain_http_are_a_warning(tmp_path):
    """iPXE checks no digest of what it boots: unlike every other fetch, http is not safe there."""
    url = "https://files.example.com/vent/artifacts/"
    imaged = write_cluster(tmp_path, **{f"  artifacts_url: {url}": "  artifacts_url: http://files.example.com/vent/",
                                        "\nboot:\n": "\nimage:\n  workers: worker-v1.36.0\n\nboot:\n"})
    assert any("iPXE checks no digest" in w for w in config.warnings(config.load(imaged)))
    imaged.write_text(imaged.read_text().replace("http://files", "https://files"))
    assert not any("iPXE" in w for w in config.warnings(config.load(imaged)))


@pytest.mark.parametrize("controllers,workers", [(1, 0), (3, 2), (5, 1000)])
def test_init_example_is_valid_and_sized(controllers, workers):
    cluster = config.parse(example.cluster_yaml("vent", controllers, workers), "example")
    assert (len(cluster.controllers), len(cluster.workers)) == (controllers, workers)
    assert not list(config.check(cluster))
    assert cluster.provider.packet.workers.spot and not cluster.provider.packet.controllers.spot


def test_init_never_overwrites_without_force(tmp_path):
    assert cli("init", tmp_path).exit_code == 0
    (tmp_path / "cluster.yaml").write_text("name: mine\n")
    result = cli("init", tmp_path, "--workers", "7")
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    assert (tmp_path / "cluster.yaml").read_text() == "name: mine\n"
    assert cli("init", tmp_path, "--workers", "7", "--force").exit_code == 0
    assert len(config.load(tmp_path / "cluster.yaml").workers) == 7


def test_init_rejects_a_bad_name(tmp_path):
    result = cli("init", tmp_path, "--name", "Not_Valid")
    assert result.exit_code == 2 and "name: 'Not_Valid' is not a valid hostname" in result.stderr
    assert not (tmp_path / "cluster.yaml").exists()


def test_schema_is_json_schema_of_the_model():
    schema = json.loads(cli("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "Cluster"
    assert {"name", "controllers", "workers", "network", "pki", "provider"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Network"]["properties"]["api_port"] | {"description": ""} == {
        "type": "integer", "minimum": 1, "maximum": 65535, "default": 6443, "description": ""}


SHAPE_ERRORS = ("unknown setting", "required setting is missing", "input should be")


def test_schema_agrees_with_the_loader():
    """An editor checking against `vent-bake schema` accepts the example, and rejects every
    broken file whose problem is one of shape or type (the rules across fields are the loader's)."""
    validator = jsonschema.Draft202012Validator(json.loads(cli("schema").stdout))
    assert not list(validator.iter_errors(yaml.safe_load(example.cluster_yaml("vent", 3, 2))))
    # JSON has no NaN or infinity, so no JSON Schema can refuse them.
    shape = [p for p in BROKEN if any(e in expected(p) for e in SHAPE_ERRORS) and "finite" not in expected(p)]
    assert len(shape) >= 6
    for path in shape:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))), path.name
