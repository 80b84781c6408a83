"""The tests' own tree copies (tests/tree_copies.py): the same bytes, modes and links as the
original, and a hole stays a hole (a copy of a store that wrote every chunk's zeros out would
cost the ~5 MB the store itself no longer writes)."""
from __future__ import annotations

import os

import tree_copies


def test_a_copy_has_the_same_bytes_modes_and_links_and_keeps_holes(tmp_path):
    source = tmp_path / "source"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "small").write_bytes(b"abc")
    (source / "deep" / "empty").write_bytes(b"")
    sparse = source / "deep" / "er" / "sparse"
    with open(sparse, "wb") as f:  # data, a hole, data, then a hole to the end
        f.write(b"x" * 5000)
        f.seek(1 << 20)
        f.write(b"y" * 7000)
        f.truncate(3 << 20)
    os.chmod(source / "small", 0o751)
    (source / "link").symlink_to("small")
    target = tmp_path / "target"
    target.mkdir()
    (target / "small").write_bytes(b"longer than the source's")  # replaced, not merged
    tree_copies.copy_tree(source, target)

    def tree(root):
        return {str(p.relative_to(root)): (p.lstat().st_mode, os.readlink(p) if p.is_symlink()
                                           else p.read_bytes() if p.is_file() else None)
                for p in root.rglob("*")}

    assert tree(target) == tree(source)
    copied = target / "deep" / "er" / "sparse"
    if sparse.stat().st_blocks * 512 < 1 << 20:  # this file system made holes in the source
        assert copied.stat().st_blocks * 512 < 1 << 20
