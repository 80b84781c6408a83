"""Finding and checking a motion dataset: layouts, split files, captions, statistics, preflight.

`SourceLayout` says where the files are; `read_split` gives the names; `preflight` checks every
entry's .npy header and caption file before any encoding and returns the good `Entry`s plus every
`Problem`. Loading the entries for the encoder is tokstore/loading.py's job.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import stat
import tokenize
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from .errors import PreflightError, SourceError

HUMANML_FEATURES = {"t2m": 263, "kit": 251}
# provenance: motions are cropped to (T // unit) * unit frames from frame 0 (original: random start)
CROP_POLICY = "start0"


# ----------------------------------------------------------------------------------------------
# where the files are


@dataclass(frozen=True)
class SourceLayout:
    """Paths of one dataset; `input_dim` is the feature count the layout implies (None: any)."""

    motion_dir: Path
    text_dir: Path
    split_file: Path
    mean_file: Path
    std_file: Path
    input_dim: int | None = None

    @classmethod
    def motionmillion(cls, root, motion_type: str = "vector_272", text_type: str = "texts",
                      version: str = "version1/t2m_60_300") -> SourceLayout:
        root = Path(root)
        stats = root / "mean_std" / motion_type
        return cls(motion_dir=root / "motion_data" / motion_type, text_dir=root / text_type,
                   split_file=root / "split" / version / "all.txt",
                   mean_file=stats / "mean.npy", std_file=stats / "std.npy")

    @classmethod
    def humanml(cls, root, dataname: str = "t2m") -> SourceLayout:
        """HumanML3D (`t2m`, 263 features) or KIT-ML (`kit`, 251): everything at the root."""
        if dataname not in HUMANML_FEATURES:
            raise SourceError(f"unknown dataname {dataname!r}: expected one of "
                              f"{sorted(HUMANML_FEATURES)}")
        root = Path(root)
        return cls(motion_dir=root / "new_joint_vecs", text_dir=root / "texts",
                   split_file=root / "all.txt", mean_file=root / "Mean.npy",
                   std_file=root / "Std.npy", input_dim=HUMANML_FEATURES[dataname])

    @classmethod
    def resolve(cls, root=None, dataname: str | None = None, motion_type: str = "vector_272",
                text_type: str = "texts", version: str = "version1/t2m_60_300", split=None,
                mean=None, std=None, motion_dir=None, text_dir=None) -> SourceLayout:
        """The layout a command line asks for: a root (MotionMillion, or HumanML3D/KIT with
        `dataname`) with optional per-path overrides, or no root and all five paths explicit."""
        paths = dict(split_file=split, mean_file=mean, std_file=std, motion_dir=motion_dir,
                     text_dir=text_dir)
        given = {k: Path(v) for k, v in paths.items() if v is not None}
        if root is None:
            missing = [k for k in paths if k not in given]
            if missing:
                raise SourceError("without a dataset root, give every path explicitly; missing: "
                                  + ", ".join(missing))
            return cls(**given)
        if dataname is not None:
            base = cls.humanml(root, dataname)
        else:
            base = cls.motionmillion(root, motion_type, text_type, version)
        return replace(base, **given)

    def motion_path(self, name: str) -> str:
        return f"{self.motion_dir}/{name}.npy"

    def text_path(self, name: str) -> str:
        return f"{self.text_dir}/{name}.txt"

    def to_dict(self) -> dict:
        """JSON-safe provenance (absolute paths), e.g. the store's `source_paths`."""
        paths = {k: str(Path(getattr(self, k)).absolute())
                 for k in ("motion_dir", "text_dir", "split_file", "mean_file", "std_file")}
        return {**paths, "input_dim": self.input_dim}

    def describe(self) -> str:
        return "\n".join(f"{k:>10}: {v}" for k, v in self.to_dict().items() if v is not None)


# ----------------------------------------------------------------------------------------------
# split, captions, statistics


# a name becomes <dir>/<name>.npy and .txt: each '/' part must fit NAME_MAX (255) with the suffix
MAX_NAME_PART = 251
MAX_NAME_BYTES = 4096 - 256  # PATH_MAX, less room for the dataset folder
MAX_CAPTION_BYTES = 4 << 20  # a caption file is a few lines: anything bigger is not one
MAX_SPLIT_BYTES = 4 << 30


class NotARegularFile(SourceError):
    """A FIFO, device, socket or directory where a data file should be (reading it would hang or
    never end), or a file beyond its size bound. `reason` is the message without the path."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def open_regular(path, max_bytes: int | None = None, kind: str = "file"):
    """`path` opened for binary reading if it is a regular file of at most `max_bytes`. Opened
    non-blocking, so that a FIFO is refused instead of waiting for a writer (the flag does
    nothing to a regular file, so it stays)."""
    irregular = f"{kind} is not a regular file (a FIFO, device or directory)"
    try:
        f = open(path, "rb", opener=_open_nonblocking)
    except IsADirectoryError:
        raise NotARegularFile(path, irregular) from None
    try:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(path, irregular)
        if max_bytes is not None and info.st_size > max_bytes:
            raise NotARegularFile(path, f"{kind} is larger than {max_bytes} bytes "
                                        f"({info.st_size})")
        return f
    except BaseException:
        f.close()
        raise


def _open_nonblocking(path, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def name_problem(name: str) -> str | None:
    """Why a split or legacy name cannot be a relative path under its folder, or None. Names
    may hold '/' (sub-folders) and spaces."""
    if "\0" in name:
        return "holds a NUL byte"
    if "\n" in name or "\r" in name:
        return "holds a line break"
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "has a '..' part (it would leave the folder)"
    if "." in parts:
        return "has a '.' part"
    if "" in parts:
        return "has an empty part ('//' or a trailing '/')"
    if len(name.encode()) > MAX_NAME_BYTES or \
            max(len(part.encode()) for part in parts) > MAX_NAME_PART:
        return (f"is longer than a file name can be ({MAX_NAME_PART} bytes a part, "
                f"{MAX_NAME_BYTES} in all)")
    return None


def read_split(path) -> list[str]:
    """Names in a split file, one a line (they may hold '/' and spaces); blank lines skipped, a
    UTF-8 byte order mark ignored. A name that is not a safe relative path is an error naming
    its line: it would read (and later write) files outside the dataset."""
    try:
        with open_regular(path, MAX_SPLIT_BYTES, "split file") as f:
            text = f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise SourceError(f"split file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: split file is not valid UTF-8 ({one_line_reason(exc)})") from None
    names = []
    for number, line in enumerate(text.split("\n"), 1):
        name = line.strip()
        if name:
            problem = name_problem(name)
            if problem:
                shown = name if len(name) <= 80 else name[:77] + "..."
                raise SourceError(f"{path}:{number}: name {shown!r} {problem}")
            names.append(name)
    return names


def read_captions(path) -> list[str]:
    """Caption lines exactly as the original's `open(path).readlines()` gives them for UTF-8 text:
    '\\n' kept (universal newlines), blank lines kept. Regular files of at most
    MAX_CAPTION_BYTES only (NotARegularFile otherwise)."""
    text = _caption_bytes(path).decode("utf-8")
    if "\r" in text:  # universal newlines, as text mode reads them
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _caption_bytes(path) -> bytes:
    with open_regular(path, MAX_CAPTION_BYTES, "caption file") as f:
        raw = f.read(MAX_CAPTION_BYTES + 1)
    if len(raw) > MAX_CAPTION_BYTES:  # grew since it was opened
        raise NotARegularFile(path, f"caption file is larger than {MAX_CAPTION_BYTES} bytes")
    return raw


def load_stats(mean_file, std_file, input_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of shape (input_dim,), in the files' own float dtype (integers become float64),
    because the original normalizes with numpy's promotion of whatever it loaded. Also rejects
    NaN/Inf and std <= 0, which would silently turn every normalized motion into garbage."""
    stats = []
    for kind, path in (("mean", mean_file), ("std", std_file)):
        try:
            with open_regular(path, kind=f"{kind} file") as f:
                shape = read_npy_header(f)[0]  # np.load would allocate whatever it declares
                if shape != (input_dim,):
                    raise SourceError(f"{path}: {kind} has shape {shape}, expected ({input_dim},)")
                f.seek(0)
                arr = np.load(f, allow_pickle=False)
        except FileNotFoundError:
            raise SourceError(f"{kind} file not found: {path}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise SourceError(f"{path}: unreadable {kind} file ({one_line_reason(exc)})") from None
        if arr.dtype.kind not in "fiu" or arr.dtype.itemsize > 8:
            raise SourceError(f"{path}: {kind} has dtype {arr.dtype}, expected a float type "
                              "of at most 64 bits (the original's torch takes no wider one)")
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise SourceError(f"{path}: {kind} contains NaN or Inf values")
        stats.append(arr)
    mean, std = stats
    if (std <= 0).any():
        raise SourceError(f"{std_file}: std has {int((std <= 0).sum())} zero or negative values")
    return mean, std


def stats_sha256(mean_file, std_file) -> str:
    """Fingerprint of the statistics files (sha256 of the two files' sha256 digests): a store built
    with other statistics holds other codes."""
    outer = hashlib.sha256()
    for path in (mean_file, std_file):
        outer.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return outer.hexdigest()


def one_line_reason(exc: Exception) -> str:
    """An exception as a one-line, run-independent reason (no object addresses)."""
    return re.sub(r" at 0x[0-9a-f]+", "", " ".join(str(exc).split()))


# ----------------------------------------------------------------------------------------------
# preflight


class Problem(NamedTuple):
    """One bad input: which entry ("" for the split as a whole), which file, a one-line reason."""

    name: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Entry(NamedTuple):
    """A split entry that passed preflight; `index_in_split`: its position among the names."""

    index_in_split: int
    name: str
    motion_path: str
    text_path: str
    frames: int
    cropped_frames: int


@dataclass
class Preflight:
    entries: list[Entry]
    problems: list[Problem]  # in split order; split-wide ones (empty split) have name ""
    n_names: int  # names in the split, duplicates included

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def frames(self) -> int:
        """Frames that will be encoded (after cropping): a progress bar's total."""
        return sum(e.cropped_frames for e in self.entries)

    def error(self, limit: int = 20) -> PreflightError:
        """All problems as one exception, one line per problem (the first `limit` shown)."""
        head = f"preflight found {len(self.problems)} problem(s) in {self.n_names} split entries:"
        lines = [head]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return PreflightError("\n".join(lines), list(self.problems))

    def raise_if_problems(self) -> None:
        if self.problems:
            raise self.error()


_HEADER_PEEK = 256  # bytes read first; numpy writes a 128-byte header for a (T, D) array


@functools.lru_cache(maxsize=4096)
def _parse_npy_header(raw: bytes) -> tuple[tuple, np.dtype, bool]:
    """(shape, dtype, fortran_order) of a raw .npy header. Cached: a dataset has a few hundred
    distinct headers (one per length), and parsing one costs ~15 us against ~7 us for opening and
    reading the file."""
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    try:
        shape, fortran, dtype = read_header(f)
    except (SyntaxError, tokenize.TokenError) as exc:  # numpy re-tokenizes a header it cannot eval
        raise ValueError(f"cannot parse the header ({exc})") from None
    return shape, dtype, fortran


def read_npy_header(f) -> tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of an open .npy file, reading only its header."""
    head = f.read(_HEADER_PEEK)
    if len(head) < 12 or head[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    if head[6] == 1:
        offset = 10 + int.from_bytes(head[8:10], "little")
    else:
        offset = 12 + int.from_bytes(head[8:12], "little")
    if offset > len(head):
        head += f.read(min(offset, 1 << 20) - len(head))
        if offset > len(head):
            raise ValueError("truncated header")
    return (*_parse_npy_header(head[:offset]), offset)


def _motion_problem(path: str, input_dim: int, unit_length: int) -> tuple[int, str | None]:
    """(frames, reason or None) for one motion file, from its header and size alone."""
    try:
        with open_regular(path, kind="motion file") as f:
            shape, dtype, _fortran, offset = read_npy_header(f)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return 0, "missing motion file"
    except NotARegularFile as exc:
        return 0, exc.reason
    except (OSError, ValueError) as exc:
        return 0, f"unreadable .npy ({one_line_reason(exc)})"
    if dtype.kind != "f" or dtype.itemsize > 8:  # float128: the original's torch takes no wider
        return 0, f"dtype {dtype} is not a float type of at most 64 bits"
    if len(shape) != 2:
        return 0, f"shape {shape} is not (frames, features)"
    frames, features = shape
    if features != input_dim:
        return frames, f"{features} features, expected {input_dim}"
    if frames < unit_length:
        return frames, f"{frames} frames, fewer than one unit ({unit_length})"
    needed = offset + frames * features * dtype.itemsize
    if size < needed:
        return frames, f"truncated .npy ({size} bytes, its header needs {needed})"
    return frames, None


def _caption_problem(path: str) -> str | None:
    try:
        _caption_bytes(path).decode("utf-8")
    except FileNotFoundError:
        return "missing caption file"
    except NotARegularFile as exc:
        return exc.reason
    except OSError as exc:
        return f"unreadable caption file ({one_line_reason(exc)})"
    except UnicodeDecodeError as exc:
        return f"caption file is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    return None


def _check_chunk(layout: SourceLayout, chunk: list[tuple[int, str]], input_dim: int,
                 unit_length: int) -> tuple[list[Entry], list[tuple[int, Problem]]]:
    entries, problems = [], []
    for index, name in chunk:
        motion_path, text_path = layout.motion_path(name), layout.text_path(name)
        frames, motion_reason = _motion_problem(motion_path, input_dim, unit_length)
        text_reason = _caption_problem(text_path)
        if motion_reason:
            problems.append((index, Problem(name, motion_path, motion_reason)))
        if text_reason:
            problems.append((index, Problem(name, text_path, text_reason)))
        if not (motion_reason or text_reason):
            cropped = (frames // unit_length) * unit_length
            entries.append(Entry(index, name, motion_path, text_path, frames, cropped))
    return entries, problems


def preflight(layout: SourceLayout, names: list[str], input_dim: int, unit_length: int,
              threads: int = 8, chunk: int = 2048, progress: bool = False) -> Preflight:
    """Check every split entry (.npy header and size, caption UTF-8) before any encoding, collecting
    every problem. Of duplicate names the first is checked, later copies are problems. `threads`
    overlap the file I/O: on a warm page cache one thread is ~20% faster (GIL), on network or cold
    storage, where a file costs latency rather than CPU, threads win by far."""
    for kind, d in (("motion", layout.motion_dir), ("caption", layout.text_dir)):
        if not Path(d).is_dir():
            raise SourceError(f"{kind} directory not found: {d}")
    split = str(layout.split_file)
    if not names:
        return Preflight([], [Problem("", split, "split is empty")], 0)
    first_seen: dict[str, int] = {}
    todo: list[tuple[int, str]] = []
    found: list[tuple[int, Problem]] = []
    for index, name in enumerate(names):
        first = first_seen.setdefault(name, index)
        if first == index:
            todo.append((index, name))
        else:
            reason = f"duplicate name in split (entries {first + 1} and {index + 1})"
            found.append((index, Problem(name, split, reason)))

    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    check = functools.partial(_check_chunk, layout, input_dim=input_dim, unit_length=unit_length)
    entries = []
    with ThreadPoolExecutor(max(1, threads)) as pool, \
            tqdm(total=len(todo), desc="preflight", unit="file", disable=not progress) as bar:
        for chunk_entries, chunk_problems in pool.map(check, chunks):
            entries += chunk_entries
            found += chunk_problems
            bar.update(len(chunk_entries) + len({i for i, _ in chunk_problems}))
    found.sort(key=lambda index_problem: index_problem[0])  # stable: motion before caption
    return Preflight(entries, [p for _, p in found], len(names))
