"""The read commands (info, ls, show, stats, verify without a checkpoint, and the exports but for
the torch-saved probability file) never import torch: a user inspecting a store waits for the
store, not for the network's framework (~3 s).

Each command runs in a child of the torch-free preforked server (preforked.PRELOADS["store"]),
which has imported cli and the store modules; the child checks that they left torch out, runs
the command and says if it was imported, so a command that imports torch is caught in its own
child and cannot hide or blame another. (Where no server starts, the child is a
fresh interpreter, which imports cli itself.)"""
import sys

import preforked
import pytest

from build_helpers import REPO, build_args, run_cli, subprocess_env, tiny_setup

COMMAND = """
import sys
assert "torch" not in sys.modules, "torch was imported before the command (by the server's imports)"
import cli
assert "torch" not in sys.modules, "importing cli imported torch"
try:
    code = cli.app(sys.argv[1:], prog_name="tokstore")
except SystemExit as exc:
    code = exc.code
if "torch" in sys.modules:
    sys.exit("torch was imported")
sys.exit(code)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("light")
    dataset, checkpoint = tiny_setup(tmp_path)
    path = tmp_path / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, path)).exit_code == 0
    return path, dataset.names[0]


@pytest.mark.parametrize("verb", ["info", "ls", "show", "stats", "verify", "export-pickle",
                                  "export-npy"])
def test_read_commands_leave_torch_unimported(store, tmp_path, verb):
    path, name = store
    more = {"show": [name], "export-pickle": [str(tmp_path / "all_data.pkl")],
            "export-npy": [str(tmp_path / "codes")]}
    result = preforked.run([sys.executable, "-c", COMMAND, verb, str(path), *more.get(verb, [])],
                           cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                           timeout=120, preload="store")
    assert result.returncode == 0, result.stdout + result.stderr
