"""The read commands (info, ls, show, stats, verify without a checkpoint) never import torch: a
user inspecting a store waits for the store, not for the network's framework (~3 s)."""
import subprocess
import sys

import pytest

from build_helpers import REPO, build_args, run_cli, subprocess_env, tiny_setup

CHILD = """
import sys
from typer.testing import CliRunner
import cli
result = CliRunner().invoke(cli.app, sys.argv[1:])
print(result.output)
assert result.exit_code == 0, result.output
assert "torch" not in sys.modules, "torch was imported"
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("light")
    dataset, checkpoint = tiny_setup(tmp_path)
    path = tmp_path / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, path)).exit_code == 0
    return path, dataset.names[0]


@pytest.mark.parametrize("verb", ["info", "ls", "show", "stats", "verify"])
def test_read_commands_leave_torch_unimported(store, verb):
    path, name = store
    args = [verb, str(path)] + ([name] if verb == "show" else [])
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
