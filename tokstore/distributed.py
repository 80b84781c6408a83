"""Running one job across `torchrun` processes: who this process is, and the exchanges a build
needs (rank 0's plan scattered to the ranks, every rank's object gathered on rank 0, rank 0's
verdict broadcast to every rank).

Only small Python objects travel (plans, codes, failures: codes are ~500x smaller than the
motions they come from), so the process group is gloo even when the encoders run on CUDA: it
moves host memory directly, where NCCL would copy every object to the GPU and back.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import TokstoreError

# rank 0 preflights the whole split while the others wait: allow for millions of files
TIMEOUT = datetime.timedelta(hours=2)


class PeerError(TokstoreError):
    """Another rank failed; this one stops with the same message."""


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _owns_group: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (one process without)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def is_rank0(self) -> bool:
        """True on the rank that plans the build and is the only writer."""
        return self.rank == 0

    def __enter__(self) -> Ranks:
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=TIMEOUT)
                self._owns_group = True
        return self

    def __exit__(self, *exc):
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False

    def scatter_from_rank0(self, make: Callable[[], tuple[Any, list]]) -> tuple[Any, Any]:
        """Rank 0 runs `make()` -> (what it keeps, one share per rank); every rank gets its share.
        If `make` raises, every other rank raises PeerError with the same message."""
        kept, shares, failure = None, None, None
        if self.is_rank0:
            try:
                kept, shares = make()
            except BaseException as exc:
                failure = exc
                shares = [_FailedOnRank0(str(exc) or type(exc).__name__)] * self.world
        if self.world == 1:
            share = shares[0]
        else:
            import torch.distributed as dist

            out = [None]
            dist.scatter_object_list(out, shares, src=0)
            share = out[0]
        if failure is not None:
            raise failure
        if isinstance(share, _FailedOnRank0):
            raise PeerError(share.message)
        return kept, share

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_to_rank0(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0; None on the other ranks. Rank 0 is the
        only writer, so each object travels once (not to every rank: that is world^2 copies)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.is_rank0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_from_rank0(self, obj):
        """Rank 0's `obj` on every rank (what the others pass is ignored)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@dataclass
class _FailedOnRank0:
    message: str
