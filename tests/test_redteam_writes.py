"""Attacks on the local zarr writes made without zarr-python (store/zarr_plain.py)."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest
from store_samples import CODEBOOK, batch
from test_store_faults import logged_commit, snapshot, synced_before_record

from tokstore import TokenStore
from tokstore.store.errors import StoreCorruptError, StoreWriteError


def test_a_commit_retried_after_a_failed_write_syncs_what_the_failed_one_wrote(tmp_path,
                                                                              monkeypatch):
    """A write that fails half-way (ENOSPC on a chunk file, after the array's zarr.json was
    grown) and a commit retried once there is room: every file the failed attempt changed is
    synced before the record too, else a power cut could leave an array shorter than the
    commit says."""
    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 8))
    store = TokenStore.open(path, mode="a")
    store.append(*batch(8, 40))
    before = snapshot(path)
    time.sleep(0.01)  # distinct mtimes
    real, calls = os.replace, []

    def replace_failing_second(*args):
        calls.append(args)
        if len(calls) == 2:  # the first: an array's grown zarr.json; the second: a chunk file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    monkeypatch.setattr(os, "replace", replace_failing_second)
    with pytest.raises(StoreWriteError, match="No space left"):
        store.commit()
    assert Path(calls[0][1]).name == "zarr.json"
    monkeypatch.undo()
    log, after = logged_commit(store, path, monkeypatch)
    _, synced = synced_before_record(path, log)
    changed = {p for p in after if before.get(p) != after[p]} - {str(path / "zarr.json")}
    assert changed - synced == set()
    with TokenStore.open(path) as reopened:
        assert len(reopened) == 40 and reopened.check() == []


@pytest.mark.parametrize("damage", ["missing", "unparsable"])
def test_a_damaged_array_metadata_names_the_store_once(tmp_path, damage):
    """An array zarr.json zarr-python must report (not the plain layout) is one error naming
    the store and the array once, as before the plain writes."""
    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 5))
    metadata = path / "codes" / "zarr.json"
    metadata.unlink() if damage == "missing" else metadata.write_text("{")
    with pytest.raises(StoreCorruptError) as caught:
        TokenStore.open(path, mode="a")
    message = str(caught.value)
    assert message.count(str(path)) == 1 and "array codes" in message, message


# ---- stats --plot ---------------------------------------------------------------------------
@pytest.fixture
def failing_drawing(monkeypatch):
    pytest.importorskip("matplotlib")
    from tokstore import plots

    def failing(*args):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "_draw", failing)
    return plots


def draw(plots, out):
    plots.plot_stats(out, np.arange(10), np.arange(5), None)


def test_a_figure_that_fails_to_draw_leaves_an_existing_file_as_it_was(tmp_path,
                                                                        failing_drawing):
    out = tmp_path / "stats.png"
    out.write_bytes(b"the previous figure")
    with pytest.raises(RuntimeError, match="drawing failed"):
        draw(failing_drawing, out)
    assert out.read_bytes() == b"the previous figure"


def test_a_figure_that_fails_to_draw_through_a_dangling_link_leaves_nothing(tmp_path,
                                                                             failing_drawing):
    """The link stays (it was there), and no empty file appears at its target."""
    out, target = tmp_path / "stats.png", tmp_path / "target.png"
    out.symlink_to(target)
    with pytest.raises(RuntimeError, match="drawing failed"):
        draw(failing_drawing, out)
    assert out.is_symlink() and not target.exists()


def test_a_figure_is_written_through_links_and_over_longer_files(tmp_path):
    pytest.importorskip("matplotlib")
    from tokstore import plots

    out, target = tmp_path / "stats.png", tmp_path / "target.png"
    target.write_bytes(b"x" * (1 << 20))  # longer than the figure: nothing of it may remain
    out.symlink_to(target)
    draw(plots, out)
    drawn = target.read_bytes()
    assert out.is_symlink() and drawn[:8] == b"\x89PNG\r\n\x1a\n" and b"x" * 64 not in drawn
    assert drawn.endswith(b"IEND\xaeB`\x82")


def test_a_figure_that_does_not_fit_on_the_disk_leaves_the_old_one_and_names_the_file(
        tmp_path, small_tmpfs):
    """A full disk while the figure is written: the figure already there stays whole (a
    temporary file is replaced over it only once written), nothing else is left, and the CLI's
    one line names the file."""
    pytest.importorskip("matplotlib")
    from build_helpers import run_cli
    from tokstore import plots

    store = tmp_path / "s.zarr"
    with TokenStore.create(store, 64000) as created:
        created.append(*batch(0, 40))
    out = small_tmpfs / "keep.png"
    out.write_bytes(b"the previous figure")
    (small_tmpfs / "filler").write_bytes(b"x" * (56 << 10))  # the figure needs more than is left
    result = run_cli("stats", store, "--plot", out)
    assert result.exit_code != 0
    assert str(out) in result.output and "No space left" in result.output, result.output
    assert out.read_bytes() == b"the previous figure"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "keep.png"]
    with pytest.raises(OSError):  # the library's own error, without the CLI
        plots.plot_stats(out, np.arange(64002), np.arange(40), None)
    assert out.read_bytes() == b"the previous figure"


def test_a_figure_in_a_folder_that_refuses_new_files_is_written_in_place(tmp_path,
                                                                        monkeypatch):
    """A folder that is not writable (or sticky) refuses the temporary file or the rename: the
    figure is then written into the existing file itself, as before."""
    pytest.importorskip("matplotlib")
    from tokstore import plots

    def refused(target, data, **kwargs):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(plots.oscalls, "replace_file", refused)
    out = tmp_path / "stats.png"
    out.write_bytes(b"x" * (1 << 20))
    draw(plots, out)
    drawn = out.read_bytes()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n" and drawn.endswith(b"IEND\xaeB`\x82")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.png"]


# ---- resume: a kill inside the truncation ---------------------------------------------------
class Killed(BaseException):
    """A kill at that instruction (nothing after it runs)."""


def uncommitted_tail(path):
    """Commit 8 samples, then write 40 more past the commit and stop (a killed build)."""
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 8))
    store = TokenStore.open(path, mode="a")
    store.append(*batch(8, 48))
    store._writer.flush()
    store._close(commit=False)


def test_a_resume_killed_while_cutting_back_leaves_no_chunk_files_past_the_end(tmp_path,
                                                                              monkeypatch):
    """Killed between a shrunk array's chunk files and its zarr.json (zarr-python's own order:
    the files first), the next resume still cuts everything back: the finished store holds
    the same files as one never interrupted, and no chunk file past an array's end."""
    from test_zarr_plain import files

    reference = tmp_path / "reference.zarr"
    uncommitted_tail(reference)
    with TokenStore.open(reference, mode="a") as store:
        store.append(*batch(8, 12))
    path = tmp_path / "s.zarr"
    uncommitted_tail(path)
    real = Path.unlink

    def killed_at_the_first_chunk(self, *args, **kwargs):
        if self.parent.name == "c":
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed_at_the_first_chunk)
    with pytest.raises(Killed):
        TokenStore.open(path, mode="a")
    monkeypatch.undo()
    with TokenStore.open(path, mode="a") as store:
        store.append(*batch(8, 12))
    assert files(path) == files(reference)


# ---- a chunk file deleted by hand -----------------------------------------------------------
def test_an_append_into_a_deleted_chunk_file_is_an_error_not_zeros(tmp_path):
    """The chunk the next append fills further holds committed values: its file deleted (or
    a dangling link) is an error naming it, as a chunk file of the wrong size is, rather than
    committed zeros in place of those values."""
    from tokstore.store.zarr_plain import PlainArray

    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 3))
    with TokenStore.open(path) as store:
        lengths = store._record.array_lengths
    array = PlainArray.open(path / "codes")
    assert lengths["codes"] % array.chunk_len
    chunk = array.chunk_path(lengths["codes"] // array.chunk_len)
    chunk.unlink()
    with pytest.raises(StoreCorruptError, match=f"{chunk}.*missing"):
        with TokenStore.open(path, mode="a") as store:
            store.append(*batch(3, 4))
    with TokenStore.open(path) as store:
        assert len(store) == 3
        assert any(str(chunk) in problem for problem in store.check())


def test_raw_chunks_with_another_fill_value_are_still_mapped(tmp_path):
    """fill_value only matters to writing (zeros pad a chunk here, zarr-python pads with the
    fill value: such arrays are written through it); reading raw chunk files does not use it,
    so they are mapped as before, without a fallback warning."""
    import json
    import warnings

    from tokstore.store.errors import StoreFallbackWarning
    from tokstore.store.zarr_plain import PlainArray

    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 5))
    metadata = path / "codes" / "zarr.json"
    meta = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**meta, "fill_value": 1}, indent=2))
    assert PlainArray.open(path / "codes") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreFallbackWarning)
        with TokenStore.open(path) as store:
            assert [store.codes(i).tolist() for i in range(5)] == [c.tolist() for c in
                                                                   batch(0, 5)[1]]
