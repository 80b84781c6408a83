"""tokstore: VQ-VAE motion codes in one chunked, crash-safe store."""

__version__ = "0.1.0"

from .errors import TokstoreError  # noqa: E402
from .store import TokenStore  # noqa: E402

__all__ = ["TokenStore", "TokstoreError", "__version__"]
