"""The relay torchrun runs in place of each rank (preforked_relay.py) behaves towards its launcher
as the rank's own process would: output and exit status are the child's, a signal death is the
same signal death, a stop signal to the relay's process group reaches the child's group, the
child (and its own children) die when the relay is SIGKILLed, and a child whose import-time
variables are not the server's refuses to run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import preforked
from build_helpers import REPO, subprocess_env
from test_lifetime import _gone


def start(code: str, *args, env=None, **popen):
    """`python -c code args` run through the relay as torchrun starts a rank (its own session)."""
    command, env = preforked.relayed(["-c", textwrap.dedent(code)], env or subprocess_env(), {})
    return subprocess.Popen(command + list(args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def test_output_argv_environment_and_exit_code_are_the_childs(tmp_path):
    process = start("""
        import os, sys
        print(sys.argv[1:], os.getcwd(), os.environ["SEEN"], sys.stdin.read())
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """, "a", "b", env={**subprocess_env(), "SEEN": "yes"}, stdin=subprocess.PIPE)
    out, err = process.communicate("input", timeout=60)
    assert process.returncode == 3
    assert out == f"['a', 'b'] {REPO} yes input\n"
    assert err == "to stderr\n"


def test_a_signal_death_is_the_relays_signal_death():
    process = start("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)")
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGUSR1


def test_a_stop_signal_to_the_relays_group_reaches_the_childs_group():
    """As torchrun stops a rank: killpg(SIGTERM). The child and its own child both get it."""
    process = start("""
        import os, signal, sys, time
        def stop(signum, frame):
            # os.write, not print: the signal may land while print("ready") still holds stdout
            os.write(1, f"child {signal.Signals(signum).name}\\n".encode())
            sys.exit(5)
        signal.signal(signal.SIGTERM, stop)
        read, write = os.pipe()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"grandchild SIGTERM\\n"),
                                                      os._exit(0)))
            os.write(write, b"x")
            for _ in range(1200):
                time.sleep(0.05)
            os._exit(1)
        os.read(read, 1)  # the grandchild's handler is in place
        print("ready", flush=True)
        for _ in range(1200):  # short sleeps: a signal landing just before one waits 50 ms
            time.sleep(0.05)
    """)
    assert process.stdout.readline() == "ready\n"
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 5, err
    assert sorted(out.splitlines()) == ["child SIGTERM", "grandchild SIGTERM"]


def test_the_child_and_its_children_die_with_the_relay():
    process = start("""
        import os, time
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
        print(os.getpid(), grandchild, flush=True)
        time.sleep(60)
    """)
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 2 and not any(_gone(p) for p in pids)
    assert set(preforked.stand_ins().items()) >= {(pids[0], process.pid)}
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 2
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(p) for p in pids), "the relayed child outlived its relay"


def test_a_child_refuses_import_time_variables_the_server_did_not_import_with():
    command, env = preforked.relayed(["-c", "print('ran')"], subprocess_env(), {})
    result = subprocess.run(command, cwd=REPO, env={**env, "OMP_NUM_THREADS": "3"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert "import-time variables" in result.stderr


def test_a_shared_server_that_died_is_seen_at_once_and_replaced(tmp_path, monkeypatch):
    """Shared servers are the controller's children, reaped only at its end: a dead one is a
    zombie, which must not pass for alive (a test process would wait for its "ready" file, or
    send requests nobody takes) -- the test process starts a server of its own instead."""
    dead = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while preforked._SharedServer(str(tmp_path), dead.pid).alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        server = preforked._SharedServer(str(tmp_path), dead.pid)  # never wrote "ready"
        started = time.monotonic()
        assert not server.alive() and not server.ready and time.monotonic() - started < 1
        env = subprocess_env()
        key = ("store", preforked._settings(env))
        monkeypatch.setenv(preforked.SHARED_SERVERS,
                           json.dumps([[key[0], list(key[1]), str(tmp_path), dead.pid]]))
        monkeypatch.setattr(preforked, "_servers", {})
        assert isinstance(preforked._shared_server(key), preforked._SharedServer)
        result = preforked.run([sys.executable, "-c", "print('ran')"], env=env,
                               capture_output=True, text=True, timeout=60, preload="store")
        assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
        assert not isinstance(preforked._servers[key], preforked._SharedServer)  # its own
    finally:
        dead.wait()
