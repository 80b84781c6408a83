"""A writer process for the crash tests: create or resume a store, append and commit in batches.

usage: store_child.py PATH BACKEND TOTAL BATCH [hold]
With `hold`, it commits half, writes (but does not commit) more, says so, and waits for a line
on stdin before committing the rest.

Faults are injected by store_faults.py (TOKSTORE_TEST_* variables); the number of write steps
taken so far is printed with each line, and at the end ("steps N").
"""
import os
import sys

import store_faults
from store_samples import CODEBOOK, batch

from tokstore import TokenStore

STEPS = store_faults.install()

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
