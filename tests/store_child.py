"""A writer process for the crash tests: create or resume a store, append and commit in batches.

usage: store_child.py PATH BACKEND TOTAL BATCH [hold]
With `hold`, it commits half, writes (but does not commit) more, says so, and waits for a line
on stdin before committing the rest.

Faults are injected by store_faults.py (TOKSTORE_TEST_* variables); the number of write steps
taken so far is printed with each line, and at the end ("steps N"). A test that reruns the
writer where nothing is to be killed calls write() in its own process: the same writer.
"""
import os
import sys

from store_samples import CODEBOOK, batch

from tokstore import TokenStore


def write(path, backend: str, total: int, step: int, hold: bool = False, steps=(0,),
          out=None) -> None:
    """Create (or resume) the store at `path` up to `total` samples, `step` to a commit, saying
    each stage on `out` (None: stdout); `steps` is store_faults.install()'s count of write steps
    so far."""
    def say(*words):
        print(*words, file=out or sys.stdout, flush=True)

    if os.path.exists(path):
        store = TokenStore.open(path, mode="a")
    else:
        store = TokenStore.create(path, CODEBOOK, backend=backend, meta={"model": "test"},
                                  chunk_bytes=64)
    n = len(store)
    say("ready", n, "step", steps[0])
    while n < total:
        stop = min(n + step, total)
        store.append(*batch(n, stop))
        if hold and n >= total // 2:
            store._writer.flush()  # on disk, past the commit point
            say("uncommitted", n)
            sys.stdin.readline()
            hold = False
        store.update_meta({"samples_done": stop})
        store.commit()
        n = stop
        say("committed", n, "step", steps[0])
    store.close()
    say("done", n)
    say("steps", steps[0])


if __name__ == "__main__":
    import store_faults

    counted = store_faults.install()
    write(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), hold=len(sys.argv) > 5,
          steps=counted)
