"""Deterministic fault injection for the store tests, in any Python process it is installed in
(store_child.py calls install(); fault_site/sitecustomize.py installs it in a CLI process).

TOKSTORE_TEST_EXIT_AT=N   die (os._exit(86)) at the Nth write step: each container write,
                          truncate, SWMR start, publish and commit, and each os.fsync, os.replace,
                          os.rename, os.pwrite -- so a test can kill a writer at every step in turn
TOKSTORE_TEST_ENOSPC_AT=N the Nth step raises ENOSPC instead (meant for an os-level step)
TOKSTORE_TEST_TRACE=FILE  each step's kind, one a line
TOKSTORE_TEST_FSIZE=BYTES cap the size of any file written (RLIMIT_FSIZE: writes beyond fail
                          with EFBIG, also inside HDF5's C code)
"""
import errno
import os

KILLED = 86


def install() -> list:
    """Wrap the write steps; returns [steps taken so far], updated as the process runs."""
    from tokstore.store import hdf5_container, zarr_container

    steps = [0]
    trace_file = os.environ.get("TOKSTORE_TEST_TRACE")
    trace = open(trace_file, "w") if trace_file else None
    exit_at = int(os.environ.get("TOKSTORE_TEST_EXIT_AT", "0"))
    full_at = int(os.environ.get("TOKSTORE_TEST_ENOSPC_AT", "0"))

    def counted(function, kind):
        def step(*args, **kwargs):
            steps[0] += 1
            if trace:
                trace.write(f"{kind}\n")
                trace.flush()
            if steps[0] == exit_at:
                os._exit(KILLED)
            if steps[0] == full_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return function(*args, **kwargs)
        return step

    for name in ("fsync", "replace", "rename", "pwrite"):
        setattr(os, name, counted(getattr(os, name), name))
    for container in (zarr_container.ZarrContainer, hdf5_container.HDF5Container):
        for name in ("write", "truncate", "start_writing", "publish", "write_record"):
            if hasattr(container, name):
                setattr(container, name, counted(getattr(container, name),
                                                 f"{container.backend}.{name}"))
    if os.environ.get("TOKSTORE_TEST_FSIZE"):
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        limit = int(os.environ["TOKSTORE_TEST_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return steps
