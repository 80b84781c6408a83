"""Synthetic MotionMillion-layout datasets (demo, tests, benchmarks) and the defects real ones have.

Motions are `mean + std * smooth_noise` with the real MotionMillion statistics (bundled in
tokstore/data), so normalized values look like real data to the encoder: roughly unit variance,
correlated over a few frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .sources import SourceLayout, read_split

SUBSETS = ("humanml", "aist/dance", "idea400", "animation/sub dir")  # '/' and a space in names
_WHO = ("a person", "someone", "a man", "a woman", "the dancer")
_DOES = ("walks forward", "jumps twice", "turns around", "waves the right hand", "sits down",
         "kicks with the left leg", "spins slowly", "steps sideways", "raises both arms")
_HOW = ("", " quickly", " slowly", " and then stops", " in a circle")

DEFECTS = ("missing_motion", "wrong_features", "nan", "inf", "too_short", "truncated", "unreadable",
           "missing_caption", "bad_utf8", "duplicate", "empty_split", "bad_stats")


@dataclass
class SyntheticDataset:
    root: Path
    layout: SourceLayout
    names: list[str]
    frames: list[int]


def motionmillion_stats() -> tuple[np.ndarray, np.ndarray]:
    """The real MotionMillion vector_272 (mean, std), float64, shipped with the package."""
    data = resources.files("tokstore") / "data"
    with (data / "mean.npy").open("rb") as fm, (data / "std.npy").open("rb") as fs:
        return np.load(fm), np.load(fs)


def _stats(input_dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if input_dim == 272:
        return motionmillion_stats()
    return rng.normal(0.0, 0.5, input_dim), rng.uniform(0.05, 1.0, input_dim)


def _motion(rng, frames: int, mean, std, smooth: int) -> np.ndarray:
    """mean + std * noise, the noise a moving average over `smooth` frames (unit variance)."""
    noise = rng.standard_normal((frames + smooth, len(mean)))
    summed = np.cumsum(noise, axis=0)
    smoothed = (summed[smooth:] - summed[:-smooth]) / np.sqrt(smooth)
    return (mean + std * smoothed).astype(np.float32)


def _captions(rng, index: int) -> str:
    lines = [f"{rng.choice(_WHO)} {rng.choice(_DOES)}{rng.choice(_HOW)}.\n"
             for _ in range(int(rng.integers(1, 4)))]
    if index % 5 == 2:
        lines.append("\n")  # a trailing blank line: readlines() keeps it
    elif index % 7 == 3:
        lines[-1] = lines[-1].rstrip("\n")  # no final newline
    return "".join(lines)


def make_dataset(root, n: int, seed: int = 0, lengths: tuple[int, int] = (60, 300),
                 input_dim: int = 272, motion_type: str = "vector_272", text_type: str = "texts",
                 version: str = "version1/t2m_60_300", smooth: int = 4) -> SyntheticDataset:
    """Write `n` motions with uniform lengths in [lengths[0], lengths[1]] frames, their captions,
    the split file and the statistics under `root`, in the MotionMillion layout."""
    rng = np.random.default_rng(seed)
    layout = SourceLayout.motionmillion(root, motion_type, text_type, version)
    mean, std = _stats(input_dim, rng)
    layout.mean_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(layout.mean_file, mean.astype(np.float64))
    np.save(layout.std_file, std.astype(np.float64))

    names = [f"{SUBSETS[i % len(SUBSETS)]}/motion_{i:06d}" for i in range(n)]
    frames = rng.integers(lengths[0], lengths[1] + 1, size=n).tolist()
    for sub in SUBSETS:
        Path(layout.motion_path(f"{sub}/x")).parent.mkdir(parents=True, exist_ok=True)
        Path(layout.text_path(f"{sub}/x")).parent.mkdir(parents=True, exist_ok=True)
    for i, (name, t) in enumerate(zip(names, frames)):
        np.save(layout.motion_path(name), _motion(rng, t, mean, std, smooth))
        Path(layout.text_path(name)).write_text(_captions(rng, i), encoding="utf-8")
    layout.split_file.parent.mkdir(parents=True, exist_ok=True)
    layout.split_file.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return SyntheticDataset(Path(root), layout, names, frames)


def corrupt(dataset, defect: str, name: str | None = None) -> Path:
    """Give one entry (or the split / statistics) a defect from DEFECTS; returns the file changed.
    `dataset` is a SyntheticDataset, a SourceLayout or a MotionMillion-layout root."""
    if isinstance(dataset, SyntheticDataset):
        layout = dataset.layout
    elif isinstance(dataset, SourceLayout):
        layout = dataset
    else:
        layout = SourceLayout.motionmillion(dataset)
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}: expected one of {DEFECTS}")
    if defect == "empty_split":
        layout.split_file.write_text("\n", encoding="utf-8")
        return layout.split_file
    if defect == "bad_stats":
        mean = np.load(layout.mean_file)
        np.save(layout.mean_file, np.append(mean, 0.0))
        return layout.mean_file
    if name is None:
        raise ValueError(f"defect {defect!r} needs the name of an entry")
    motion_path, text_path = Path(layout.motion_path(name)), Path(layout.text_path(name))
    if defect == "duplicate":
        names = read_split(layout.split_file) + [name]
        layout.split_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        return layout.split_file
    if defect == "missing_caption":
        text_path.unlink()
        return text_path
    if defect == "bad_utf8":
        text_path.write_bytes(b"a person walks \xff\xfe forward.\n")
        return text_path
    if defect == "missing_motion":
        motion_path.unlink()
    elif defect == "unreadable":
        motion_path.write_bytes(b"this is not a numpy file\n")
    elif defect == "truncated":
        data = motion_path.read_bytes()
        motion_path.write_bytes(data[:len(data) // 2])
    else:
        motion = np.load(motion_path)
        if defect == "wrong_features":
            motion = motion[:, :-1]
        elif defect == "too_short":
            motion = motion[:1]
        else:
            motion[len(motion) // 2, 3] = np.nan if defect == "nan" else np.inf
        np.save(motion_path, motion)
    return motion_path
