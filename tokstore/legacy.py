"""The original get-codes step's files, in and out of a store.

Exporters write what MotionMillion's training scripts read (one .npy per motion, the probability
file, all_data.pkl), so those scripts keep working unchanged. Importers move outputs of the
original into a new store without re-encoding. A pickle runs code when loaded, so all_data.pkl is
read with an unpickler that admits numpy arrays and builtin containers only. torch is imported
only for the probability file (a torch.save tensor): export-npy, export-pickle and a pickle
import start in a fraction of a second.
Formats: ../shared/spec/legacy-formats.md.
"""
from __future__ import annotations

import collections
import errno
import os
import pickle
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from tokstore.errors import TokstoreError
from tokstore.provenance import Provenance
from tokstore.sources import name_problem, open_regular, read_captions, read_npy_header, read_split
from tokstore.store import TokenStore
from tokstore.store.format import probabilities

if TYPE_CHECKING:
    import torch

LEGACY_DTYPES = ("int32", "int64")   # FSQ models write int32, codebook (ema_reset) models int64
PICKLE_PROTOCOL = 4                  # what the original's pickle.dump wrote (Python 3.8-3.13 default)
IMPORT_BATCH = 512                   # samples handed to store.append at once
SAVE_THREADS = 8                     # export-npy: file creation waits on the file system, not the CPU
SAVE_WINDOW = 256                    # export-npy: samples read ahead of the writer threads
# What unpickling a damaged or hostile file through RestrictedUnpickler raises besides its own
# refusals (found by feeding it truncated, bit-flipped and spliced pickles of every protocol):
# truncation (UnpicklingError, EOFError), bad text or numbers (ValueError), opcodes applied to the
# wrong objects (TypeError, AttributeError, KeyError, IndexError), absurd declared frame lengths
# (OverflowError, MemoryError) and nesting deeper than the array rebuild can follow.
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                 LookupError, OverflowError, MemoryError, RecursionError)


class LegacyFormatError(TokstoreError):
    """Legacy files that are missing, malformed or inconsistent with each other."""


class UnsafePickleError(LegacyFormatError):
    """A pickle that references something beyond numpy arrays and builtin containers."""


class LeftoverFileWarning(RuntimeWarning):
    """A failed export or import could not remove what it had half written."""


# ---------------------------------------------------------------------------------------------
# names and paths

def check_name(name: str) -> str:
    """A legacy name becomes a relative path: refuse one that would leave its folder."""
    problem = "is empty" if not name else name_problem(name)
    if problem:
        raise LegacyFormatError(f"name {name!r} cannot be a relative file path: it {problem}")
    return name


def legacy_file(root: str | Path, name: str, suffix: str) -> Path:
    """`root/<name><suffix>`, sub-folders as the name has them (names may contain spaces)."""
    return Path(root) / (check_name(name) + suffix)


def replace_atomically(out_file: str | Path, write) -> Path:
    """Write through `write(f)` into a new, exclusively created temporary sibling with an
    unpredictable name (never a file someone planted, never through a symlink), then rename it
    over `out_file`: no half-written file on a crash, and no temporary file after any failure."""
    out_file = Path(out_file)
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a regular file where a folder of the path should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out_file)) from None
    fd, tmp = tempfile.mkstemp(prefix=".tokstore-", suffix=".tmp", dir=out_file.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have given it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, out_file)
    except BaseException as exc:
        _remove_while_failing(exc, os.unlink, tmp)
        if isinstance(exc, OSError) and exc.filename in (tmp, None):
            exc.filename, exc.filename2 = str(out_file), None  # name the file the user gave
        raise
    return out_file


def _remove_while_failing(failure: BaseException, remove, path) -> None:
    """Clean up `path` while `failure` propagates (the caller re-raises it); should the removal
    fail too, warn (LeftoverFileWarning) rather than replace `failure` or stay quiet."""
    try:
        remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        warnings.warn(f"{path} is left behind: removing it after {type(failure).__name__} failed "
                      f"({exc})", LeftoverFileWarning, stacklevel=3)


def outside_store(store, out: str | Path) -> Path:
    """`out`, refused when it is the store itself or lies inside it: an export written over a
    zarr store's metadata or an HDF5 store's file would destroy the store it reads."""
    out = Path(out)
    if "://" in str(store.path):
        return out
    home = Path(store.path).resolve()
    target = out.resolve()
    if target == home or home in target.parents:
        raise LegacyFormatError(f"{out}: inside the store {store.path} it exports; "
                                "write the export elsewhere")
    return out


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _save_npy(path: Path, codes: np.ndarray) -> None:
    """np.save, refusing a symlink planted where the file goes (O_NOFOLLOW)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LegacyFormatError(f"{path} is a symbolic link: not writing through it") from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, codes)
    except BaseException as exc:
        _remove_while_failing(exc, os.unlink, path)  # never leave a truncated code file behind
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a full disk says which file it stopped
        raise


# ---------------------------------------------------------------------------------------------
# the probability file

def legacy_probs(counts: np.ndarray) -> torch.Tensor:
    """The probability tensor the original saves, from a counts array."""
    import torch

    return torch.from_numpy(probabilities(np.asarray(counts, np.int64)))


def load_prob(path: str | Path) -> torch.Tensor:
    """A probability file as the original saved it: torch.save of a 1-D float32 tensor."""
    import torch

    from vqvae.checkpoint import TORCH_LOAD_ERRORS

    try:
        with open_regular(path, kind="prob file") as f:
            prob = torch.load(f, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, TokstoreError):
        raise
    except TORCH_LOAD_ERRORS as exc:
        raise LegacyFormatError(f"{path}: not a torch-saved probability tensor ({exc})") from None
    if not isinstance(prob, torch.Tensor) or prob.dtype != torch.float32 or prob.dim() != 1 \
            or len(prob) < 3:
        raise LegacyFormatError(f"{path}: expected a 1-D float32 tensor of length codebook_size + 2")
    return prob


# ---------------------------------------------------------------------------------------------
# the restricted unpickler

def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Stands in for _codecs.encode, which pickle protocols 0-2 use to spell bytes (an array's data)."""
    if encoding != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# numpy's array rebuild functions (protocols 0-4, and 5), whatever module this numpy keeps them in
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_FROMBUFFER = np.empty(0).__reduce_ex__(5)[0]
ARRAY_KINDS = "biuf"  # dtypes a legacy pickle's arrays may have: no objects, no records


class _DTypeSpec:
    """What a pickle says a dtype is, recorded instead of built: numpy's own dtype and array
    __setstate__ trust their input (an object array with too short a list segfaults)."""

    def __init__(self, spec, align=False, copy=True):
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in "<>|=":
            raise UnsafePickleError("refusing a dtype with an unexpected state")
        self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        try:
            dtype = np.dtype(self.spec)
        except TypeError as exc:
            raise UnsafePickleError(f"refusing dtype {self.spec!r} ({exc})") from None
        if dtype.kind not in ARRAY_KINDS or dtype.fields or dtype.subdtype or dtype.itemsize > 8:
            raise UnsafePickleError(f"refusing dtype {dtype}: a legacy pickle holds integer "
                                    "and float arrays only")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _as_dtype(value) -> np.dtype:
    return value.dtype() if isinstance(value, _DTypeSpec) else _DTypeSpec(value).dtype()


class _ArrayType:
    """Stands in for numpy.ndarray, which a pickle may name only as _reconstruct's argument."""


class _PendingArray:
    """What _reconstruct returns: the array is made in __setstate__ from the pickle's own bytes,
    so its size is bounded by the file, whatever shape the pickle declares."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], bytes)):
            raise UnsafePickleError("refusing an array state that is not raw bytes")
        _version, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, _as_dtype(dtype), shape, "F" if fortran else "C")


def _array_from_bytes(raw: bytes, dtype: np.dtype, shape, order: str) -> np.ndarray:
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refusing an array of shape {shape!r}")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(raw):
        raise LegacyFormatError(f"an array declares shape {shape} of {dtype} but holds "
                                f"{len(raw)} bytes")
    return np.frombuffer(raw, dtype).reshape(shape, order=order).copy(order="K")


def _reconstruct(array_type, shape, _dtype):
    if array_type is not _ArrayType or shape != (0,):
        raise UnsafePickleError("refusing an array reconstruction numpy does not write")
    return _PendingArray()


def _frombuffer(buffer, dtype, shape, order):
    if not isinstance(buffer, (bytes, bytearray)):
        raise UnsafePickleError("refusing an out-of-band array buffer")
    return _array_from_bytes(bytes(buffer), _as_dtype(dtype), shape, order)


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,
    **{(f"{package}.multiarray", "_reconstruct"): _reconstruct     # numpy 2 spells numpy._core,
       for package in ("numpy._core", "numpy.core")},              # numpy 1.x numpy.core
    **{(f"{package}.numeric", "_frombuffer"): _frombuffer
       for package in ("numpy._core", "numpy.core")},
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): _DTypeSpec,
    **{("builtins", kind.__name__): kind for kind in (dict, list, tuple, set, frozenset, str)},
}


def _arrays_made(value):
    """`value` with every _PendingArray replaced by its array (containers rebuilt)."""
    if isinstance(value, _PendingArray):
        if not hasattr(value, "array"):
            raise LegacyFormatError("an array without its data")
        return value.array
    if isinstance(value, dict):
        return {_arrays_made(k): _arrays_made(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_arrays_made(v) for v in value)
    if isinstance(value, (_DTypeSpec, _ArrayType)) or value is _ArrayType:
        raise UnsafePickleError("refusing a bare numpy type outside an array")
    return value


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays of numbers and builtin containers; every other global is refused when
    the pickle names it, before anything could call it. Arrays are built from the pickle's own
    bytes only (never from a declared shape), so memory stays bounded by the file's size."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a legacy pickle may hold only dicts, lists, str "
                "and numpy arrays") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent reference: not part of a legacy pickle")

    def load(self):
        return _arrays_made(super().load())


def safe_load_pickle(path: str | Path):
    """Load an untrusted pickle through RestrictedUnpickler; any failure is a LegacyFormatError."""
    with open_regular(path, kind="pickle") as f:
        try:
            return RestrictedUnpickler(f).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (LegacyFormatError, *PICKLE_ERRORS) as exc:
            raise LegacyFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") \
                from None


# ---------------------------------------------------------------------------------------------
# validation of what legacy files hold

def _check_codes(codes, where: str) -> np.ndarray:
    """A legacy code array: integer, shape (1, T'), int32 or int64. Returns the 1-D codes."""
    if not isinstance(codes, np.ndarray) or codes.dtype.name not in LEGACY_DTYPES \
            or codes.ndim != 2 or codes.shape[0] != 1:
        desc = f"{codes.dtype} array of shape {codes.shape}" if isinstance(codes, np.ndarray) \
            else type(codes).__name__
        raise LegacyFormatError(f"{where}: expected an int32/int64 array of shape (1, T), got {desc}")
    return codes[0]


def _check_lines(lines, where: str) -> list[str]:
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise LegacyFormatError(f"{where}: expected a list of str (caption lines)")
    return lines


def _check_unique(names: list[str], where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise LegacyFormatError(f"{where} lists {name!r} twice; a store holds each name once")
        seen.add(name)


def _resolve_codebook_size(codebook_size: int | None, prob: torch.Tensor | None) -> int:
    if prob is not None:
        from_prob = len(prob) - 2
        if codebook_size is not None and codebook_size != from_prob:
            raise LegacyFormatError(f"--codebook-size {codebook_size} disagrees with the prob file "
                                    f"(length {len(prob)} = codebook size {from_prob} + 2)")
        return from_prob
    if codebook_size is None:
        raise LegacyFormatError("the codebook size is needed: give --codebook-size (or a prob file)")
    if codebook_size < 1:
        raise LegacyFormatError(f"codebook size must be positive, got {codebook_size}")
    return codebook_size


# ---------------------------------------------------------------------------------------------
# exporters

def legacy_dtype(store) -> np.dtype:
    """The dtype the original wrote for this store's model, as recorded in the store's meta."""
    name = Provenance.from_meta(store.meta).legacy_code_dtype
    if name not in LEGACY_DTYPES:
        raise LegacyFormatError(f"{store.path}: meta has no usable legacy_code_dtype ({name!r}); "
                                f"expected one of {', '.join(LEGACY_DTYPES)}")
    return np.dtype(name)


def legacy_codes(codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One sample's codes as the original held them: an owned (1, T') array in the legacy dtype."""
    return np.array(codes, dtype=dtype).reshape(1, -1)


def export_npy(store, out_dir: str | Path, progress: bool = True) -> int:
    """`out_dir/<name>.npy` per sample. Creating a file costs far more than reading its name and
    codes, so the store is read here in order while writer threads create the files, at most
    SAVE_WINDOW samples in flight: memory stays constant. Returns the file count."""
    out_dir = outside_store(store, out_dir)
    dtype = legacy_dtype(store)
    folders, in_flight = set(), collections.deque()
    with ThreadPoolExecutor(SAVE_THREADS) as pool, \
            tqdm(total=len(store), desc="export-npy", unit="motion", disable=not progress) as bar:
        for index in range(len(store)):
            sample = store[index]
            path = legacy_file(out_dir, sample.name, ".npy")
            if path.parent not in folders:
                path.parent.mkdir(parents=True, exist_ok=True)
                folders.add(path.parent)
            in_flight.append(pool.submit(_save_npy, path, legacy_codes(sample.codes, dtype)))
            if len(in_flight) == SAVE_WINDOW:
                in_flight.popleft().result()
                bar.update()
        for saved in in_flight:
            saved.result()
            bar.update()
    return len(store)


def export_prob(store, out_file: str | Path) -> Path:
    """The probability file: torch.save of the float32 tensor the original computed."""
    import torch

    return replace_atomically(outside_store(store, out_file),
                              lambda f: torch.save(legacy_probs(store.counts), f))


def all_data(store, names: list[str] | None = None, progress: bool = True) -> dict:
    """The all_data.pkl dict for `names` (default: every sample, store order). Dict entries follow
    the first appearance of each name, file_names keeps every entry, as the original built them."""
    file_names = list(store.names if names is None else names)
    if names is not None:
        known = set(store.names)
        missing = [name for name in file_names if name not in known]
        if missing:
            shown = ", ".join(repr(name) for name in missing[:5])
            raise LegacyFormatError(f"{len(missing)} split name(s) not in {store.path}: {shown}"
                                    + (" ..." if len(missing) > 5 else ""))
    dtype = legacy_dtype(store)
    text_data, code_data = {}, {}
    for position, name in enumerate(tqdm(file_names, desc="export-pickle", unit="motion",
                                         disable=not progress)):
        if name in code_data:
            continue
        index = position if names is None else store.index_of(name)
        text_data[name] = list(store.texts(index))
        code_data[name] = legacy_codes(store.codes(index), dtype)
    return {"text_data": text_data, "code_data": code_data, "file_names": file_names}


def export_pickle(store, out_file: str | Path, split: str | Path | None = None,
                  progress: bool = True) -> Path:
    """all_data.pkl for the whole store, or for a split file's names in its order."""
    out_file = outside_store(store, out_file)
    names = read_split(split) if split is not None else None
    data = all_data(store, names, progress)
    return replace_atomically(out_file, lambda f: pickle.dump(data, f, protocol=PICKLE_PROTOCOL))


# ---------------------------------------------------------------------------------------------
# importers

def _load_npy(path: Path) -> np.ndarray:
    """np.load of an untrusted .npy: a regular file whose header asks for no more than it holds
    (np.load would first allocate whatever the header declares)."""
    with open_regular(path, kind="code file") as f:
        shape, dtype, _fortran, offset = read_npy_header(f)
        needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
        size = os.fstat(f.fileno()).st_size
        if size < needed:
            raise LegacyFormatError(f"{path}: truncated .npy ({size} bytes, its header needs "
                                    f"{needed})")
        f.seek(0)
        return np.load(f, allow_pickle=False)


def _legacy_samples_from_dirs(codes_dir: Path, texts_dir: Path, names: list[str]):
    """(name, 1-D codes, caption lines) per name, one code file and one text file at a time."""
    for name in names:
        code_path = legacy_file(codes_dir, name, ".npy")
        try:
            codes = _load_npy(code_path)
        except (FileNotFoundError, PermissionError, TokstoreError):
            raise
        except (OSError, ValueError) as exc:  # what np.load raises past a checked header
            raise LegacyFormatError(f"{code_path}: not a readable .npy file ({exc})") from None
        text_path = legacy_file(texts_dir, name, ".txt")
        try:
            lines = read_captions(text_path)
        except UnicodeDecodeError as exc:
            raise LegacyFormatError(f"{text_path}: captions are not valid UTF-8 ({exc})") from None
        yield name, _check_codes(codes, str(code_path)), lines


def _write_store(store_path, samples, total: int, codebook_size: int, backend: str | None,
                 meta: dict, prob: torch.Tensor | None, progress: bool):
    """Create a store from (name, codes, lines) samples and commit it once every sample is in and
    the prob file (if any) agrees; on any failure the new store is removed. The first sample's
    dtype is the legacy dtype; every other sample must share it."""
    store_path = Path(store_path)
    if store_path.exists():
        raise LegacyFormatError(f"{store_path} already exists; import writes a new store")
    counts = np.zeros(codebook_size + 2, dtype=np.int64)   # what the prob file must say

    def append(store, batch):
        names, codes_list, texts_list = zip(*batch)
        store.append(names, codes_list, texts_list)            # checks names and code range
        counts[:codebook_size] += np.bincount(np.concatenate(codes_list), minlength=codebook_size)
        counts[codebook_size] += len(batch)

    try:
        with TokenStore.create(store_path, codebook_size, backend=backend, meta=meta) as store:
            batch, dtype = [], None
            for name, codes, lines in tqdm(samples, total=total, desc="import", unit="motion",
                                           disable=not progress):
                dtype = dtype or codes.dtype.name
                if codes.dtype.name != dtype:
                    raise LegacyFormatError(f"{name!r}: codes are {codes.dtype}, earlier ones {dtype}; "
                                            "one model writes one dtype")
                batch.append((name, codes, lines))
                if len(batch) == IMPORT_BATCH:
                    append(store, batch)
                    batch = []
            if batch:
                append(store, batch)
            if prob is not None:  # torch is loaded: load_prob read it
                import torch

                recomputed = legacy_probs(counts)
                if not torch.equal(prob, recomputed):
                    raise LegacyFormatError(
                        f"the prob file disagrees with the codes in "
                        f"{int((prob != recomputed).sum())} of {len(prob)} entries (written for "
                        f"another split or model?)")
            store.update_meta({"legacy_code_dtype": dtype})
            store.commit()
    except BaseException as exc:  # the half-made store goes; the error that stopped it stays
        if store_path.is_dir():
            _remove_while_failing(exc, shutil.rmtree, store_path)
        elif store_path.exists():
            _remove_while_failing(exc, os.unlink, store_path)
        raise
    return store_path


def import_code_dir(store_path, codes_dir, texts_dir, split, prob_file=None,
                    codebook_size: int | None = None, backend: str | None = None,
                    progress: bool = True) -> Path:
    """A new store from the original's code directory, caption folder and split file (+ prob file,
    checked against the recomputed counts). The legacy dtype is read off the code files."""
    codes_dir, texts_dir = Path(codes_dir), Path(texts_dir)
    names = read_split(split)
    if not names:
        raise LegacyFormatError(f"{split}: no names")
    _check_unique(names, str(split))
    prob = load_prob(prob_file) if prob_file is not None else None
    codebook_size = _resolve_codebook_size(codebook_size, prob)
    missing = [path for name in names for path in (legacy_file(codes_dir, name, ".npy"),
                                                    legacy_file(texts_dir, name, ".txt"))
               if not path.is_file()]
    if missing:
        raise LegacyFormatError(f"{len(missing)} legacy file(s) missing, first: {missing[0]}")
    meta = {"source_paths": {"codes_dir": str(codes_dir), "texts_dir": str(texts_dir),
                             "split": str(split), "prob": None if prob_file is None else str(prob_file)},
            "imported_from": "legacy code directory"}
    return _write_store(store_path, _legacy_samples_from_dirs(codes_dir, texts_dir, names),
                        len(names), codebook_size, backend, meta, prob, progress)


def read_all_data(path: str | Path) -> dict:
    """all_data.pkl through the restricted unpickler, its structure checked entry by entry."""
    data = safe_load_pickle(path)
    if not isinstance(data, dict) or not {"text_data", "code_data", "file_names"} <= data.keys():
        raise LegacyFormatError(f"{path}: expected a dict with text_data, code_data and file_names")
    text_data, code_data, file_names = data["text_data"], data["code_data"], data["file_names"]
    if not isinstance(text_data, dict) or not isinstance(code_data, dict) \
            or not isinstance(file_names, list) or not all(isinstance(n, str) for n in file_names):
        raise LegacyFormatError(f"{path}: text_data and code_data must be dicts, file_names a list of str")
    _check_unique(file_names, f"{path}: file_names")
    for field, entries in (("text_data", text_data), ("code_data", code_data)):
        if set(entries) != set(file_names):
            odd = sorted(set(entries) ^ set(file_names), key=str)[:3]
            raise LegacyFormatError(f"{path}: {field} and file_names name different motions, "
                                    f"e.g. {', '.join(repr(n) for n in odd)}")
    for name in file_names:
        try:
            check_name(name)
        except LegacyFormatError as exc:
            raise LegacyFormatError(f"{path}: file_names: {exc}") from None
        _check_codes(code_data[name], f"{path}: code_data[{name!r}]")
        _check_lines(text_data[name], f"{path}: text_data[{name!r}]")
    return data


def import_pickle(store_path, pickle_file, codebook_size: int | None, backend: str | None = None,
                  progress: bool = True) -> Path:
    """A new store from an all_data.pkl, in its file_names order; the codebook size must be given."""
    data = read_all_data(pickle_file)
    codebook_size = _resolve_codebook_size(codebook_size, None)
    names = data["file_names"]
    if not names:
        raise LegacyFormatError(f"{pickle_file}: file_names is empty")
    samples = ((name, data["code_data"][name][0], data["text_data"][name]) for name in names)
    meta = {"source_paths": {"pickle": str(pickle_file)}, "imported_from": "all_data.pkl"}
    return _write_store(store_path, samples, len(names), codebook_size, backend, meta, None, progress)
