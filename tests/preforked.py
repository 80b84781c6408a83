"""Test processes forked from an interpreter that has already imported torch, numpy, h5py
and tokstore, instead of a fresh `python -m cli` (or store_child.py) paying ~1-5 s of imports
each time: the suite starts hundreds of them.

One server per test process, environment and preload (what it imports first: with torch, or
only the store and the CLI; see PRELOADS), started on first use and gone when the test process
is, listens on a Unix socket.
A request carries the command (a module run as __main__ or a script path, and its argv), the
environment, the working directory, whether to start a new session, and -- as passed file
descriptors -- the child's stdin, stdout and stderr. The server forks; the child sets all that
up, runs the command as `python -m` / `python script` would (SystemExit, uncaught exceptions,
KeyboardInterrupt's re-raised SIGINT, atexit handlers) and exits; the server reports the pid,
then the wait status, and reaps the child once the caller hangs up (as a Popen child stays a
zombie until waited for, its pid and group take signals until then). `Preforked` is the test
side: a small subprocess.Popen look-alike (pid, poll, wait, communicate, send_signal, kill,
returncode, stdin/stdout/stderr), so a test signals, watches and reaps the real process as it
would a Popen one.

What the server imported is imported before the command runs; variables read when libraries
load (OMP_NUM_THREADS, ...) get one server per value, so the child sees what a fresh process
would. A script (store_child.py) runs fresh; cli.py, which holds nothing but its typer app, is
imported by the server with its click command built once (each child runs `app()` from it). The
server issues no warnings and holds no locks, so once-per-process messages and lock state are a
fresh process's.
Commands it cannot stand in for (other programs and modules) start a real process through the
same calls; a child that measures its own memory resets its peak first (the pickle-bomb tests in
test_legacy.py: /proc/self/clear_refs, then VmHWM - VmRSS). A launcher (torchrun, itself a
child of the server) starts its ranks as real processes, but their `python -m cli` can come
from the server too: the launcher runs `preforked_relay.py` in their place (see `relayed`), a
bare interpreter that has the server fork the child and passes signals, exit status and its own
death on to it.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SITE = TESTS / "fault_site"
MODULES = ("cli", "torch.distributed.run")  # what `python -m` may run here; others start fresh
# what a server imports before it forks, by name (a request names one): "full" for commands
# that build or load a model; "store" leaves torch out (a child forks ~3x faster from a process
# a quarter the size) for the store writers and the CLI's commands that never import it. Each
# has what a CLI command imports as it runs: typer's parameter coercion loads pydantic (~100 ms
# of every child, left to the child)
PRELOADS = {
    "full": ["numpy", "torch", "torch.utils.data", "h5py", "typer", "typer.rich_utils",
             "typer._click.decorators", "typer._adapters", "pydantic.plugin._loader", "tqdm",
             "tokstore", "tokstore.store", "tokstore.build", "tokstore.inspect", "tokstore.render",
             "tokstore.legacy", "tokstore.torch", "vqvae", "store_faults", "store_samples", "cli"],
    "store": ["numpy", "h5py", "typer", "typer.rich_utils", "typer._click.decorators",
              "typer._adapters", "pydantic.plugin._loader", "tqdm", "tokstore", "tokstore.store",
              "tokstore.inspect", "tokstore.render", "vqvae.config", "vqvae.normalize",
              "store_faults", "store_samples", "cli"],
}
# read when the interpreter or a library starts (PYTHONPATH: a sitecustomize there runs first):
# one server per combination a test asks for
IMPORT_TIME_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                         "PYTHONHASHSEED", "PYTHONPATH", "TOKSTORE_PORTABLE")


# ---- the server ---------------------------------------------------------------------------
def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_child(request: dict, fds: list[int], address: str) -> None:
    """In the forked child: become the requested process, run its command, exit."""
    import atexit as child_atexit
    import io
    import runpy
    import traceback

    if request.get("stands_in") and _settings(request["env"]) != _settings(os.environ):
        # a relay's launcher chose the environment: it must be the one this server imported with
        os.write(fds[2], f"preforked: the relay's import-time variables "
                         f"{_settings(request['env'])} are not this server's "
                         f"{_settings(os.environ)}\n".encode())
        os._exit(1)
    if request.get("stands_in"):  # before the command runs: what it does may come to a test first
        _record_stand_in(address, os.getpid(), request["stands_in"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # TMPDIR is the request's, as in a fresh process
    os.chdir(request["cwd"])
    if request["new_session"]:
        os.setsid()
    if request["memory_limit"]:
        limit = request["memory_limit"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False),
                                                 encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.open(1, "wb", closefd=False),
                                                   encoding="utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.open(2, "wb", closefd=False),
                                                   encoding="utf-8", errors="backslashreplace",
                                                   line_buffering=True)
    kind, target = request["run"]
    first = {"path": target, "module": str(REPO / f"{target}.py"), "code": "-c"}[kind]
    sys.argv = [first, *request["argv"]]
    sys.path[0] = {"path": os.path.dirname(target), "module": request["cwd"], "code": ""}[kind]
    if request["faults"] and any(key.startswith("TOKSTORE_TEST_") for key in os.environ):
        import store_faults  # what fault_site/sitecustomize.py does in a fresh interpreter

        store_faults.install()
    code, interrupted = 0, False
    try:
        if kind == "path":
            runpy.run_path(target, run_name="__main__")
        elif kind == "code":
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
        elif target == "cli" and "cli" in sys.modules:
            _run_preloaded_cli()
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        child_atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def _run_preloaded_cli() -> None:
    """What `python -m cli` runs (`sys.exit(app())` in cli as __main__), from the cli module the
    server imported: cli.py holds no state but its typer app, so this is a fresh run of it,
    without compiling and executing the module again or typer building its click command again
    (see _prebuild_cli_command; ~25 ms of each CLI child). The child ends with the run."""
    cli = sys.modules.pop("cli")  # as __main__ only: `import cli` would make a second copy
    cli.__name__ = "__main__"  # the name its code runs under (warnings filter on it, ...)
    sys.modules["__main__"] = cli
    sys.exit(cli.app())


def _prebuild_cli_command() -> None:
    """In the server: typer builds the click command from the app on every call (~15 ms, its
    signatures parsed again); build the preloaded cli's once, for every child to use."""
    if "cli" not in sys.modules:
        return
    import typer.main

    app, build = sys.modules["cli"].app, typer.main.get_command
    command = build(app)
    typer.main.get_command = lambda typer_app: command if typer_app is app else build(typer_app)


def _stand_in_file(address: str, pid: int) -> str:
    return os.path.join(os.path.dirname(address), f"{pid}.stands-in")


def _record_stand_in(address: str, pid: int, relay: int) -> None:
    """Say, in the server's folder, which relay the child `pid` stands in for (till it is
    reaped): see stand_ins."""
    with open(_stand_in_file(address, pid) + ".new", "w") as record:
        record.write(str(relay))
    os.replace(_stand_in_file(address, pid) + ".new", _stand_in_file(address, pid))


def _quiet_preloaded_finalizers() -> None:
    """torch.library's exit-time finalizers (one per operator library torch registered at
    import, ~130) take ~30 ms of each child's exit to unregister operators in a process that is
    ending: no file, output or status depends on them, so children skip the ones imported here.
    """
    if "torch" not in sys.modules:
        return
    import torch.library
    import weakref

    for finalizer, info in list(weakref.finalize._registry.items()):
        if info.func is torch.library._del_library:
            finalizer.atexit = False


def _wait_status(exited) -> int:
    """The os.waitpid status of what os.waitid said about an ended child."""
    if exited.si_code == os.CLD_EXITED:
        return exited.si_status << 8
    return exited.si_status | (0x80 if exited.si_code == os.CLD_DUMPED else 0)


def serve(address: str, preload: str) -> None:
    gc.disable()  # no full collections while the imports allocate (see gc.freeze below)
    for name in PRELOADS[preload]:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address)
    listener.listen(64)
    _quiet_preloaded_finalizers()
    _prebuild_cli_command()
    gc.freeze()
    gc.enable()  # in each child as in a fresh process
    print("ready", flush=True)
    open(os.path.join(os.path.dirname(address), "ready"), "w").close()  # for the sharers
    # a child's end wakes the loop at once (a signal that comes before select still wakes it)
    child_ended, child_ended_write = os.pipe()
    for fd in (child_ended, child_ended_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(child_ended_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the pipe hears it
    children: dict[int, socket.socket] = {}  # not reaped yet: pid -> its caller's connection
    callers: dict[socket.socket, int] = {}  # a connection still open -> the pid forked for it
    relays: set[int] = set()  # the children standing in for a relay (preforked_relay.py)
    # ended, its status sent: a zombie until its caller hangs up, as a Popen child stays one
    # until it is waited for (so a signal to its pid or group does not fail before then)
    ended: set[int] = set()

    def reap(pid: int) -> None:
        os.waitpid(pid, 0)
        del children[pid]
        ended.discard(pid)
        relays.discard(pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_stand_in_file(address, pid))

    while True:
        readable, _, _ = select.select([listener, sys.stdin, child_ended, *callers], [], [], 1)
        if sys.stdin in readable and not sys.stdin.readline():
            break  # the test process went away
        if child_ended in readable:
            os.read(child_ended, 4096)
        for connection in set(readable) & set(callers):  # a caller hung up (it sends no more)
            pid = callers.pop(connection)
            connection.close()
            if pid in ended:
                reap(pid)
            elif pid in relays:  # the relay died: the child dies with it, as its group would
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # its session, its children with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # not yet in its own session: no children yet
        if listener in readable:
            connection, _ = listener.accept()
            data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            if not data:  # the caller died before asking
                for fd in fds:
                    os.close(fd)
                connection.close()
                continue
            request = json.loads(data)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (child_ended, child_ended_write):
                    os.close(fd)
                listener.close()
                connection.close()
                for other in callers:
                    other.close()
                _run_child(request, fds, address)
            for fd in fds:
                os.close(fd)
            children[pid], callers[connection] = connection, pid
            if request.get("stands_in"):
                relays.add(pid)
            with contextlib.suppress(OSError):  # a relay that died already: its hang-up kills pid
                connection.send(json.dumps({"pid": pid}).encode())
        for pid in [pid for pid in children if pid not in ended]:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if exited is None:
                continue
            if children[pid] in callers:
                ended.add(pid)
                with contextlib.suppress(OSError):
                    children[pid].send(json.dumps({"status": _wait_status(exited)}).encode())
            else:
                reap(pid)
    for connection in callers:
        connection.close()
    folder = os.path.dirname(address)  # its own: the socket and its log
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


# ---- the test side ------------------------------------------------------------------------
class _Server:
    """A server this process started (it ends when this process does), not waited for until
    it is first used."""

    def __init__(self, settings: tuple, preload: str):
        self.folder = tempfile.mkdtemp(prefix="tokstore-preforked-")
        self.address = os.path.join(self.folder, "server.sock")
        env = {k: v for k, v in os.environ.items()
               if k not in IMPORT_TIME_VARIABLES and not k.startswith("TOKSTORE_TEST_")}
        env.update({k: v for k, v in zip(IMPORT_TIME_VARIABLES, settings) if v is not None})
        env["PYTHONPATH"] = os.pathsep.join([p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                             if p] + [str(REPO), str(TESTS)])
        with open(os.path.join(self.folder, "server.log"), "w") as log:  # its own errors
            self.process = subprocess.Popen([sys.executable, __file__, self.address, preload],
                                            cwd=REPO,
                                            env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        self._ready: bool | None = None

    @property
    def ready(self) -> bool:
        """Whether it got to its loop (not where torch cannot load); waits for it the first time."""
        if self._ready is None:
            self._ready = self.process.stdout.readline() == "ready\n"
        return self._ready

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self):
        """The server ends (and removes its folder) when its stdin closes."""
        self.process.stdin.close()
        self.process.wait(timeout=30)
        ready = self.ready  # (its line is still in the pipe where nobody used it)
        self.process.stdout.close()
        if not ready and os.path.isdir(self.folder):  # it never got to its loop
            for name in os.listdir(self.folder):
                os.unlink(os.path.join(self.folder, name))
            os.rmdir(self.folder)


class _SharedServer:
    """A server that another pytest process started (see share_servers) and owns."""

    def __init__(self, folder: str, pid: int):
        self.folder, self.pid = folder, pid
        self.address = os.path.join(folder, "server.sock")
        self._ready: bool | None = None

    @property
    def ready(self) -> bool:
        """Whether it got to its loop; waits for it (its "ready" file) the first time."""
        if self._ready is None:
            deadline = time.monotonic() + 300
            while not os.path.exists(os.path.join(self.folder, "ready")):
                if not self.alive() or time.monotonic() > deadline:
                    self._ready = False
                    return False
                time.sleep(0.01)
            self._ready = True
        return self._ready

    def alive(self) -> bool:
        """Not ended: its owner reaps it only at the end, so a dead one is a zombie till then."""
        if os.path.isdir("/proc/self"):
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
            except FileNotFoundError:
                return False
            return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
        try:  # no /proc (macOS): a zombie passes for alive, and a dead server fails its callers
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


# one per preload and set of import-time variables, made (or found shared) on first use
_servers: dict[tuple[str, tuple], _Server | _SharedServer] = {}
# names the servers a pytest process shares with the test processes it starts (share_servers)
SHARED_SERVERS = "PREFORKED_SHARED_SERVERS"


def share_servers(env: dict) -> None:
    """In a pytest process that starts test processes (xdist's controller): start a server for
    each preload with `env`'s import-time variables (those the tests ask for most), without
    waiting for them, and name them in this process's environment, which the test processes
    inherit. They fork from these instead of each importing torch into servers of its own; the
    servers end with this process."""
    shared = []
    for preload in PRELOADS:
        server = _Server(_settings(env), preload)
        atexit.register(server.stop)
        shared.append([preload, list(_settings(env)), server.folder, server.process.pid])
    os.environ[SHARED_SERVERS] = json.dumps(shared)


def _shared_server(key: tuple[str, tuple]) -> _SharedServer | None:
    for preload, settings, folder, pid in json.loads(os.environ.get(SHARED_SERVERS, "[]")):
        if (preload, tuple(settings)) == key:
            return _SharedServer(folder, pid)
    return None


def subprocess_env() -> dict:
    """The environment test subprocesses run with. One intra-op thread, as torchrun sets it: on
    a small shared machine two threads fighting over busy cores make tiny encoder batches
    10-100x slower."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _server_path(env: dict) -> str | None:
    """The request's PYTHONPATH less the entries every server has (and fault_site, whose hooks
    the child installs itself)."""
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
             if p and p not in (str(REPO), str(TESTS), str(SITE))]
    return os.pathsep.join(extra) or None


def _settings(env) -> tuple:
    """What tells servers apart: the import-time variables of `env` (PYTHONPATH less the
    entries every server has)."""
    return tuple(_server_path(env) if k == "PYTHONPATH" else env.get(k)
                 for k in IMPORT_TIME_VARIABLES)


def _server(env: dict, preload: str = "full") -> _Server | _SharedServer | None:
    key = preload, _settings(env)
    server = _servers.get(key)
    if server is None or (server.ready and not server.alive()):
        server = _shared_server(key) if server is None else None  # once: not a dead one again
        if server is None or not server.ready:  # none shared, or it failed: one of its own
            server = _Server(key[1], preload)
            atexit.register(server.stop)
        _servers[key] = server
    return server if server.ready else None


def _request(command, env, cwd, new_session, memory_limit) -> dict | None:
    """What the server runs for `command` (a subprocess argument list), or None where only a
    fresh interpreter does (another program or module, a foreign PYTHONPATH entry)."""
    command = [str(c) for c in command]
    if len(command) < 2 or command[0] != sys.executable:
        return None
    if command[1] == "-m" and len(command) > 2 and command[2] in MODULES:
        run, argv = ["module", command[2]], command[3:]
    elif command[1] == "-c" and len(command) > 2:
        run, argv = ["code", command[2]], command[3:]
    elif command[1].endswith(".py"):
        run, argv = ["path", command[1]], command[2:]
    else:
        return None
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"run": run, "argv": argv, "env": dict(env), "cwd": str(cwd or os.getcwd()),
            "new_session": new_session, "faults": str(SITE) in path,
            "memory_limit": memory_limit}


class Preforked:
    """A command run in a child of the preforked server, used like a text-mode subprocess.Popen
    whose stdin, stdout and stderr are each PIPE or DEVNULL."""

    def __init__(self, request: dict, server: _Server, stdin, stdout, stderr):
        self.args = request["args"]
        self.returncode = None
        self._output = {}
        self._readers = []
        ends = []
        for role, how in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if how == subprocess.PIPE:
                read, write = os.pipe()
                child, parent = (read, write) if role == "stdin" else (write, read)
                ends.append(child)
                setattr(self, role, open(parent, "w" if role == "stdin" else "r",
                                         encoding="utf-8"))
            else:
                ends.append(os.open(os.devnull, os.O_RDWR))
                setattr(self, role, None)
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._connection.connect(server.address)
            socket.send_fds(self._connection, [json.dumps(request).encode()], ends)
        finally:
            for fd in ends:
                os.close(fd)
        self.pid = json.loads(self._connection.recv(4096))["pid"]

    def _status(self, timeout):
        if self.returncode is None:
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                return None
            message = self._connection.recv(4096)
            self._connection.close()
            if not message:
                raise RuntimeError("the preforked server went away")
            self.returncode = os.waitstatus_to_exitcode(json.loads(message)["status"])
        return self.returncode

    def poll(self):
        return self._status(0)

    def wait(self, timeout=None):
        if self._status(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def _read_all(self, role):
        self._output[role] = getattr(self, role).read()

    def communicate(self, input=None, timeout=None):
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        if not self._readers:
            for role in ("stdout", "stderr"):
                if getattr(self, role) is not None:
                    reader = threading.Thread(target=self._read_all, args=(role,), daemon=True)
                    reader.start()
                    self._readers.append(reader)
        for reader in self._readers:
            reader.join(timeout)
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return self._output.get("stdout"), self._output.get("stderr")


def popen(command, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
          start_new_session=False, memory_limit=None, preload="full"):
    """subprocess.Popen(command, ...) in text mode, forked from the server where it can be
    (memory_limit: RLIMIT_AS in bytes, set in the child; preload: which server, see PRELOADS)."""
    env = dict(os.environ if env is None else env)
    request = _request(command, env, cwd, start_new_session, memory_limit)
    server = _server(env, preload) if request is not None else None
    if server is None:
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

        return subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                                stderr=stderr, text=True, start_new_session=start_new_session,
                                preexec_fn=limit if memory_limit else None)
    request["args"] = [str(c) for c in command]
    return Preforked(request, server, stdin if stdin is not None else subprocess.DEVNULL,
                     stdout if stdout is not None else subprocess.DEVNULL,
                     stderr if stderr is not None else subprocess.DEVNULL)


def stand_ins() -> dict[int, int]:
    """{child pid: pid of the relay it stands in for} of the relayed children running now in
    this process's servers (their parent is the server, the relay is where they belong)."""
    found = {}
    for server in _servers.values():
        for name in os.listdir(server.folder) if os.path.isdir(server.folder) else ():
            if name.endswith(".stands-in"):
                with contextlib.suppress(FileNotFoundError, ValueError):
                    found[int(name.split(".")[0])] = int(
                        Path(server.folder, name).read_text())
    return found


def relayed(program: list[str], env: dict, launcher_sets: dict) -> tuple[list[str], dict] | None:
    """For a launcher that starts `python PROGRAM...` processes itself (torchrun): the program to
    have it run instead (the relay, see preforked_relay.py) and the environment to start the
    launcher with; None where the server cannot start. `program`: ["-m", MODULE] (one of
    MODULES) or ["-c", CODE]. `launcher_sets`: what the launcher gives its children where `env`
    leaves it unset (torchrun: OMP_NUM_THREADS=1), so that the server's import-time variables
    are those the children get (the child refuses to run otherwise)."""
    import preforked_relay

    if program[0] == "-m" and program[1] not in MODULES:
        return None
    server = _server({**launcher_sets, **env})
    if server is None:
        return None
    return ([sys.executable, "-S", str(TESTS / "preforked_relay.py"), *program],
            {**env, preforked_relay.ADDRESS_VARIABLE: server.address})


def run(command, *, cwd=None, env=None, capture_output=False, text=False, timeout=None,
        input=None, memory_limit=None, preload="full"):
    """subprocess.run(command, ...) in text mode, forked from the server where it can be."""
    pipe = subprocess.PIPE if capture_output else None
    process = popen(command, cwd=cwd, env=env, stdout=pipe, stderr=pipe,
                    stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                    memory_limit=memory_limit, preload=preload)
    try:
        out, err = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
