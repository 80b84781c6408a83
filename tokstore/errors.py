"""Exception types. Library code raises these; cli.py turns them into one-line messages."""


class TokstoreError(Exception):
    """Base class of every error tokstore raises on bad input or a bad store."""
