"""Rank 0's store writing: windows appended in split order, and commits that carry the skipped
list, the exactness record and the resume point, so that a re-run resumes at the last commit.

The appends and the periodic commits run on one writer thread (StoreWriterThread) fed through a
small bounded queue: encoding goes on while a commit fsyncs, and a writer that falls behind holds
the encoder back instead of piling windows up in memory. Only one thread touches the store at a
time: the writer thread until it is closed, the caller after.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from vqvae import VQVAE
from vqvae.exact import Checks

from .build_encode import MARGIN_POLICY, EncodedWindow, RankWork
from .build_options import EXACT
from .provenance import COMMITTED, BuildProgress, Provenance
from .store import TokenStore


@dataclass
class WriterState:
    """What rank 0 keeps: the open store and the bookkeeping its commits carry."""

    store: TokenStore
    model: VQVAE
    preflight_skipped: list[dict]  # every problem preflight found, in split order
    load_skipped: list[dict]  # entries that failed to load, found so far
    split_index: dict[str, int]
    split_sha256: str
    n_names: int
    frames_to_do: int
    resumed_from: int
    next_entry: int  # split index the next window starts at (as far as is appended)
    since_commit: int = 0  # motions appended since the last commit
    consistent: bool = True  # False while an append is under way: never commit then
    mode: str = EXACT
    prior_checks: Checks = field(default_factory=Checks)  # what earlier runs recorded
    checks: Checks = field(default_factory=Checks)  # this run's appended windows
    work: RankWork | None = None  # rank 0's own work (what its exactness check saw)
    agreement: dict | None = None  # an inexact run's agreement with exact codes


def append(state: WriterState, window: EncodedWindow) -> None:
    state.consistent = False
    state.store.append(window.names, window.codes, window.texts)
    state.load_skipped += window.failures
    state.checks = state.checks.add(window.checks)
    state.next_entry = window.next_entry
    state.since_commit += len(window.names)
    state.consistent = True


def commit(state: WriterState, complete: bool = False) -> None:
    skipped = sorted(state.preflight_skipped + state.load_skipped,
                     key=lambda s: state.split_index[s["name"]])
    next_entry = state.n_names if complete else state.next_entry
    progress = BuildProgress(next_entry, state.n_names, state.split_sha256, complete)
    state.store.update_meta(Provenance(skipped=skipped, exactness=_exactness_record(state),
                                       build=progress).to_meta(only=COMMITTED))
    state.store.commit()
    state.since_commit = 0


def _exactness_record(state: WriterState) -> dict:
    """Meta `exactness`: how this store's codes were checked, over every run that wrote them."""
    checks = state.prior_checks.add(state.checks)
    if state.work is not None and state.work.exceeded:
        checks.max_reencode_deviation = max(checks.max_reencode_deviation, state.work.exceeded)
    record = {"mode": Provenance.from_meta(state.store.meta).exactness_mode or state.mode,
              **checks.to_dict(),
              "safety_factor": MARGIN_POLICY.safety, "margin_floor": MARGIN_POLICY.floor,
              "stop_fraction": MARGIN_POLICY.stop_fraction,
              "decision_variable": ("FSQ bounded value" if state.model.config.quantizer == "FSQ"
                                    else "codebook search |dx| / |x|")}
    if state.agreement is not None:
        record["agreement"] = state.agreement
    return record


WRITER_QUEUE_WINDOWS = 2  # windows waiting for the writer: the encoder blocks beyond that
_CLOSE = None  # the queue's end marker


class StoreWriterThread:
    """Appends the windows handed to it, in order, on its own thread, and commits whenever
    `commit_every` motions have been appended since the last commit, checked at the end of each
    round of windows (as the inline loop did: the same commits, so the same store).

    A failed append or commit ends the writing: its exception is raised in the caller at the next
    hand-over (or by close), the windows still queued are dropped, nothing else is written."""

    def __init__(self, state: WriterState, commit_every: int,
                 depth: int = WRITER_QUEUE_WINDOWS):
        self.state = state
        self.commit_every = commit_every
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)  # (window, then check for a commit)
        self._thread = threading.Thread(target=self._write, name="tokstore-store-writer",
                                        daemon=True)
        self._thread.start()

    def write_round(self, windows: list[EncodedWindow], check_commit: bool = True) -> None:
        """Queue a round's windows (blocks while the queue is full), with a commit check after
        the last; raises the writer's error, if any."""
        for i, window in enumerate(windows):
            if self.error is not None:
                raise self.error
            self._queue.put((window, check_commit and i == len(windows) - 1))

    @property
    def queued(self) -> int:
        """Windows waiting for the writer now."""
        return self._queue.qsize()

    def close(self) -> BaseException | None:
        """Write what is queued (unless writing failed), end the thread; the writer's error."""
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join()
        return self.error

    def _write(self) -> None:
        while (item := self._queue.get()) is not _CLOSE:
            if self.error is not None:
                continue  # writing failed: drop the rest, keep taking so that no put blocks
            window, check_commit = item
            try:
                append(self.state, window)
                if check_commit and self.state.since_commit >= self.commit_every:
                    commit(self.state)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self.error = exc
