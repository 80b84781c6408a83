"""The token store: VQ-VAE codes + captions in one chunked, crash-safe Zarr or HDF5 store."""
from .errors import (CodeRangeError, DuplicateNameError, NameNotFoundError, NotAStoreError,
                     SampleError, StoreCorruptError, StoreError, StoreFallbackWarning,
                     StoreLockedError, StoreVersionError, StoreWriteError)
from .store import Sample, TokenStore

__all__ = ["TokenStore", "Sample", "StoreError", "NotAStoreError", "StoreVersionError",
           "StoreCorruptError", "StoreLockedError", "SampleError", "DuplicateNameError",
           "CodeRangeError", "NameNotFoundError", "StoreWriteError", "StoreFallbackWarning"]
