"""Errors of the token store. All are TokstoreError, so cli.py prints them as one line."""
from __future__ import annotations

import errno

from ..errors import TokstoreError


class StoreFallbackWarning(RuntimeWarning):
    """A store is read a slower or costlier way than its format allows (an array not in the
    plain layout read through zarr, a damaged counts slot recomputed from the codes): reported
    once per process and store, the reads still correct."""


class StoreError(TokstoreError):
    """Base class of every store error (also: misuse such as writing a read-only store)."""


class NotAStoreError(StoreError):
    """The path does not exist, or is not a tokstore store."""


class StoreVersionError(StoreError):
    """The store was written by a newer format version than this tokstore reads."""


class StoreCorruptError(StoreError):
    """The store's attributes or arrays are damaged."""


class StoreLockedError(StoreError):
    """Another process holds the store open for writing."""


class SampleError(StoreError):
    """`append` was given samples it cannot store; nothing was added."""


class DuplicateNameError(SampleError):
    """A sample name occurs twice in one batch, or is already in the store."""


class CodeRangeError(SampleError):
    """A code is negative or not below the codebook size."""


class NameNotFoundError(StoreError, KeyError):
    """No sample has this name. Also a KeyError, so `store[name]` behaves like a dict."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


# the action of a StoreWriteError raised past a commit point (the sync that makes it durable)
AFTER_COMMIT_POINT = ("syncing the commit just written (it may be in the store: reopen it to see "
                      "which commit it holds)")


def refused_after_failure(path: str, failure: str) -> StoreError:
    """What a container that stopped writing after `failure` answers every later write (a
    failure past a commit point may have left that commit as the last one)."""
    kept = "" if AFTER_COMMIT_POINT in failure else "; the store is as its last commit left it"
    return StoreError(f"{path}: not writing after an earlier failure ({failure}){kept}")


class StoreWriteError(StoreError, OSError):
    """The operating system refused a write (disk full, read-only, I/O error). Nothing after the
    last commit counts; the store stays valid at it (where the failure came past a commit
    point, the action says that this commit may be the last: AFTER_COMMIT_POINT). Also an
    OSError: `.errno` and `.filename` say what failed where."""

    def __init__(self, path: str, action: str, error_number: int | None, reason: str):
        OSError.__init__(self, error_number, reason, path)
        self.message = f"{path}: {action} failed: {reason}"

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_os_error(cls, path: str, action: str, exc: OSError) -> "StoreWriteError":
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != path else ""
        code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
        return cls(path, action, exc.errno, f"{exc.strerror or exc}{code}{where}")
