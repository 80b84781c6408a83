"""Rank 0's store writing: windows appended in split order, and commits that carry the skipped
list, the exactness record and the resume point, so that a re-run resumes at the last commit.
"""
from __future__ import annotations

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
