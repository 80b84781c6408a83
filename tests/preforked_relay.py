"""A stand-in process for a program a launcher starts itself (torchrun's ranks): run by a bare
interpreter (`python -S`, standard library only, ~0.05 s), it has the preforked server fork the
real command (`python -m MODULE ARGS...`, MODULE from preforked.MODULES, or `python -c CODE
ARGS...`) with this process's
argv, environment, working directory and stdin/stdout/stderr, and then behaves as that process
would towards the launcher:

- stop signals it receives (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) go to the
  child's process group: the child starts a session of its own, as the launcher started this
  one, so a launcher's killpg reaches the child and its own children (loader workers) as it would
  have reached the real process group;
- it exits with the child's status, a death by a signal re-raised as the same death;
- if this process dies (SIGKILL), the server kills the child's process group at once (it watches
  this process's connection for the hang-up), as the launcher's SIGKILL to the group would have.

The server's socket comes in the environment variable ADDRESS_VARIABLE (set by
preforked.relayed), removed before the child gets the environment. The server records which
relay each child stands in for (preforked.stand_ins), so a test finds the child among the
relay's descendants.
Usage: python -S preforked_relay.py (-m MODULE | -c CODE) [ARGS...]
"""
import json
import os
import select
import signal
import socket
import sys

ADDRESS_VARIABLE = "TOKSTORE_PREFORKED_SERVER"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def _exit_like(status: int) -> None:
    """End this process as the child ended: its exit code, or death by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default is not death (none of the stop signals)
    os._exit(os.WEXITSTATUS(status))


def main(argv: list[str]) -> None:
    kind, target, args = {"-m": "module", "-c": "code"}[argv[0]], argv[1], argv[2:]
    env = dict(os.environ)
    address = env.pop(ADDRESS_VARIABLE)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    site = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_site")
    request = {"run": [kind, target], "argv": args, "env": env, "cwd": os.getcwd(),
               "new_session": True, "faults": site in path, "memory_limit": None,
               "stands_in": os.getpid()}
    # a signal that comes before the child's pid is known waits, then goes to the child
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.connect(address)
    socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
    child = json.loads(connection.recv(4096))["pid"]

    def forward(signum, _frame):
        try:
            os.killpg(child, signum)
        except ProcessLookupError:  # the child's group is gone: its status is on its way
            pass

    # A signal that lands after Python's last check for signals but before a blocking call
    # enters the kernel would only be forwarded once that call returns (when the child has
    # ended): the wakeup pipe makes the select below return for it whenever it came.
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while connection not in select.select([connection, wakeup_read], [], [])[0]:
        os.read(wakeup_read, 512)  # the handlers run as select returns
    message = connection.recv(4096)
    if not message:
        print(f"preforked_relay: the server went away before {target} ended", file=sys.stderr)
        os._exit(1)
    _exit_like(json.loads(message)["status"])


if __name__ == "__main__":
    main(sys.argv[1:])
