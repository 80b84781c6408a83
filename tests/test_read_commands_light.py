"""The read commands (info, ls, show, stats, verify without a checkpoint, and the exports but for
the torch-saved probability file) never import torch: a user inspecting a store waits for the
store, not for the network's framework (~3 s).

One fresh interpreter per test module imports the CLI (and checks that alone left torch out),
then forks a child per command: each child starts from exactly what a fresh `import cli` holds,
so a command that imported torch is caught in its own child and cannot hide or blame another."""
import json
import subprocess
import sys

import pytest

from build_helpers import REPO, build_args, run_cli, subprocess_env, tiny_setup

SERVER = """
import json, os, signal, sys, traceback
from typer.testing import CliRunner
import cli
assert "torch" not in sys.modules, "importing cli imported torch"

def run(args):
    result = CliRunner().invoke(cli.app, args)
    print(result.output)
    if result.exit_code != 0:
        print(f"exit code {result.exit_code}")
        return 1
    if "torch" in sys.modules:
        print("torch was imported")
        return 2
    return 0

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            signal.alarm(120)
            with open(request["output"], "w") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                try:
                    code = run(request["args"])
                except BaseException:
                    traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.fixture(scope="module")
def light_cli():
    """The command-forking interpreter: write a request line, read the child's exit code."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, env=subprocess_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield server
    server.stdin.close()
    server.wait(timeout=60)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("light")
    dataset, checkpoint = tiny_setup(tmp_path)
    path = tmp_path / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, path)).exit_code == 0
    return path, dataset.names[0]


@pytest.mark.parametrize("verb", ["info", "ls", "show", "stats", "verify", "export-pickle",
                                  "export-npy"])
def test_read_commands_leave_torch_unimported(store, light_cli, tmp_path, verb):
    path, name = store
    more = {"show": [name], "export-pickle": [str(tmp_path / "all_data.pkl")],
            "export-npy": [str(tmp_path / "codes")]}
    args = [verb, str(path)] + more.get(verb, [])
    output = tmp_path / "output"
    light_cli.stdin.write(json.dumps({"args": args, "output": str(output)}) + "\n")
    light_cli.stdin.flush()
    reply = light_cli.stdout.readline()
    assert reply, f"the command-forking interpreter exited ({light_cli.wait(timeout=60)})"
    assert int(reply) == 0, output.read_text() if output.exists() else reply
