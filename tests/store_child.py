"""A writer process for the crash tests: create or resume a store, append and commit in batches.

usage: store_child.py PATH BACKEND TOTAL BATCH [hold]
With `hold`, it commits half, writes (but does not commit) more, says so, and waits for a line
on stdin before committing the rest.

Fault injection (deterministic): TOKSTORE_TEST_EXIT_AT=N makes the process die (os._exit) at the
Nth write step -- each container write, truncate, SWMR start, publish and commit, and each
os.fsync, os.replace, os.rename, os.pwrite -- so a test can kill it at every step in turn; the
number of steps taken is printed at the end ("steps N"). TOKSTORE_TEST_FSIZE=BYTES caps the size
of any file written (RLIMIT_FSIZE: writes beyond fail with EFBIG, also inside HDF5's C code).
"""
import errno
import os
import sys

from store_samples import CODEBOOK, batch

from tokstore import TokenStore
from tokstore.store import hdf5_container, zarr_container

STEPS = [0]


TRACE = open(os.environ["TOKSTORE_TEST_TRACE"], "w") if os.environ.get("TOKSTORE_TEST_TRACE") else None


def step_counted(function, kind):
    exit_at = int(os.environ.get("TOKSTORE_TEST_EXIT_AT", "0"))
    full_at = int(os.environ.get("TOKSTORE_TEST_ENOSPC_AT", "0"))

    def counted(*args, **kwargs):
        STEPS[0] += 1
        if TRACE:
            TRACE.write(f"{kind}\n")
            TRACE.flush()
        if STEPS[0] == exit_at:
            os._exit(86)
        if STEPS[0] == full_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return function(*args, **kwargs)
    return counted


for name in ("fsync", "replace", "rename", "pwrite"):
    setattr(os, name, step_counted(getattr(os, name), name))
for container in (zarr_container.ZarrContainer, hdf5_container.HDF5Container):
    for name in ("write", "truncate", "start_writing", "publish", "write_record"):
        if hasattr(container, name):
            setattr(container, name, step_counted(getattr(container, name),
                                                  f"{container.backend}.{name}"))
if os.environ.get("TOKSTORE_TEST_FSIZE"):
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = int(os.environ["TOKSTORE_TEST_FSIZE"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

path, backend, total, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hold = len(sys.argv) > 5
if os.path.exists(path):
    store = TokenStore.open(path, mode="a")
else:
    store = TokenStore.create(path, CODEBOOK, backend=backend, meta={"model": "test"}, chunk_bytes=64)
n = len(store)
print("ready", n, "step", STEPS[0], flush=True)
while n < total:
    stop = min(n + step, total)
    store.append(*batch(n, stop))
    if hold and n >= total // 2:
        store._writer.flush()  # on disk, past the commit point
        print("uncommitted", n, flush=True)
        sys.stdin.readline()
        hold = False
    store.update_meta({"samples_done": stop})
    store.commit()
    n = stop
    print("committed", n, "step", STEPS[0], flush=True)
store.close()
print("done", n, flush=True)
print("steps", STEPS[0], flush=True)
