"""Exception types. Library code raises these; cli.py turns them into one-line messages."""


class TokstoreError(Exception):
    """Base class of every error tokstore raises on bad input or a bad store."""


# --- dataset sources (tokstore/sources.py) ---
class SourceError(TokstoreError):
    """A dataset input (layout, split, captions, normalization stats) is missing or malformed."""


class PreflightError(SourceError):
    """The preflight pass found bad entries; `.problems` holds every one, not just the first."""

    def __init__(self, message: str, problems: list):
        super().__init__(message)
        self.problems = problems


class StoppedBySignal(TokstoreError):
    """SIGTERM or SIGINT stopped a command after it kept what it could (the message says what).
    `signum`: the signal; `rank`: under torchrun, only rank 0 speaks for the job."""

    def __init__(self, message: str, signum: int, rank: int = 0):
        super().__init__(message)
        self.signum, self.rank = signum, rank
