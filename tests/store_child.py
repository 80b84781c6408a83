"""A writer process for the crash tests: create or resume a store, append and commit in batches.

usage: store_child.py PATH BACKEND TOTAL BATCH [hold]
With `hold`, it commits half, writes (but does not commit) more, says so, and waits for a line
on stdin before committing the rest.
"""
import os
import sys

from store_samples import CODEBOOK, batch

from tokstore import TokenStore

path, backend, total, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hold = len(sys.argv) > 5
if os.path.exists(path):
    store = TokenStore.open(path, mode="a")
else:
    store = TokenStore.create(path, CODEBOOK, backend=backend, meta={"model": "test"}, chunk_bytes=64)
n = len(store)
print("ready", n, flush=True)
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
    print("committed", n, flush=True)
store.close()
print("done", n, flush=True)
