"""Provenance, the typed record of the meta keys the build writes: it reads today's and older
stores' meta, gives back exactly the keys and values the build writes, and a build's meta is the
one it wrote before the record existed."""
from __future__ import annotations

import numpy as np
import torch
from build_helpers import build_args, build_first_entries, run_cli, tiny_config, tiny_setup

from tokstore import TokenStore
from tokstore.inspect import recorded_stats, store_info
from tokstore.provenance import BuildProgress, Provenance

# the keys a build's first commit leaves, in the order it writes them
BUILD_KEYS = ["legacy_code_dtype", "model_config", "checkpoint_sha256", "stats_sha256",
              "crop_policy", "precision", "device", "torch_version", "exactness_mode", "encoders",
              "source_paths", "mean", "std", "stats_dtype", "mean_dtype", "std_dtype", "skipped",
              "exactness", "build"]


def _built(tmp_path, name="s.zarr", *extra):
    dataset, checkpoint = tiny_setup(tmp_path)
    store = tmp_path / name
    result = run_cli(*build_args(dataset, checkpoint, store, *extra))
    assert result.exit_code == 0, result.output
    return dataset, checkpoint, store


def test_a_builds_meta_round_trips_key_for_key_in_order(tmp_path):
    dataset, checkpoint, path = _built(tmp_path)
    with TokenStore.open(path) as store:
        meta = store.meta
    assert list(meta) == BUILD_KEYS
    again = Provenance.from_meta(meta).to_meta()
    assert again == meta and list(again) == list(meta)
    provenance = Provenance.from_meta(meta)
    assert provenance.other == {}
    assert provenance.build == BuildProgress(len(dataset.names), len(dataset.names),
                                             meta["build"]["split_sha256"], True)
    assert provenance.config() == tiny_config()
    assert provenance.unit_length == tiny_config().unit_length
    assert provenance.encoders == [{"device": "cpu", "precision": "fp32", "mode": "exact",
                                    "torch_version": torch.__version__,
                                    "cpu_capability": torch.backends.cpu.get_cpu_capability()}]
    mean, std = provenance.recorded_stats()
    assert mean.dtype == np.dtype(meta["mean_dtype"]) and std.dtype == np.dtype(meta["std_dtype"])
    assert mean.tolist() == meta["mean"]


def test_the_meta_values_are_the_builds_inputs(tmp_path):
    dataset, checkpoint, path = _built(tmp_path)
    from tokstore.sources import stats_sha256
    from vqvae import file_sha256

    with TokenStore.open(path) as store:
        meta = store.meta
    assert meta["checkpoint_sha256"] == file_sha256(checkpoint)
    layout = dataset.layout
    assert meta["stats_sha256"] == stats_sha256(layout.mean_file, layout.std_file)
    assert meta["model_config"] == tiny_config().to_dict()
    assert meta["legacy_code_dtype"] == "int32" and meta["crop_policy"] == "start0"
    assert (meta["precision"], meta["device"], meta["exactness_mode"]) == ("fp32", "cpu", "exact")
    assert meta["stats_dtype"] == meta["mean_dtype"]
    assert meta["skipped"] == []
    assert list(meta["build"]) == ["next_entry", "split_entries", "split_sha256", "complete"]


def test_an_older_meta_reads_with_the_gaps_as_none():
    """Before exactness_mode, encoders, mean/std_dtype and `build` existed: one stats_dtype."""
    old = {"legacy_code_dtype": "int64", "precision": "fp32",
           "device": "cpu", "mean": [0.0, 1.0], "std": [1.0, 2.0], "stats_dtype": "float32",
           "imported_from": "all_data.pkl"}
    provenance = Provenance.from_meta(old)
    assert provenance.exactness_mode is None and provenance.encoders is None
    assert provenance.stat_dtypes == ("float32", "float32")
    mean, std = provenance.recorded_stats()
    assert mean.dtype == np.float32 and std.dtype == np.float32
    assert provenance.config() is None and provenance.unit_length is None
    assert provenance.progress == BuildProgress()  # nothing done yet: resume at 0
    assert provenance.other == {"imported_from": "all_data.pkl"}
    assert provenance.to_meta() == old
    assert Provenance.from_meta({}).stat_dtypes == ("float64", "float64")
    assert Provenance.from_meta(None).to_meta() == {}


def test_only_writes_just_those_keys_in_that_order():
    provenance = Provenance(device="cpu", precision="bf16", encoders=[], exactness_mode="mixed",
                            build=BuildProgress(3, 9, "ab", False))
    assert list(provenance.to_meta(only=("exactness_mode", "device", "source_paths"))) == [
        "exactness_mode", "device"]  # source_paths is None: left out
    assert provenance.to_meta(only=("build",)) == {"build": {
        "next_entry": 3, "split_entries": 9, "split_sha256": "ab", "complete": False}}


def test_readers_take_the_stats_from_an_older_meta(tmp_path):
    """inspect reads one stats_dtype for both where the store records no pair."""
    dataset, checkpoint, path = _built(tmp_path)
    with TokenStore.open(path) as store:
        meta = store.meta
    for key in ("mean_dtype", "std_dtype"):
        del meta[key]
    meta["stats_dtype"] = "float32"
    mean, std = recorded_stats(meta)
    assert mean.dtype == np.float32 and std.dtype == np.float32


def test_a_resumed_build_updates_only_the_run_keys(tmp_path):
    """A grown split resumes the store: the first run's identity stays, the run keys and the
    commit keys are rewritten in place (the key order is the first run's)."""
    dataset, checkpoint = tiny_setup(tmp_path)
    path = tmp_path / "grown.zarr"
    build_first_entries(dataset, checkpoint, path)
    with TokenStore.open(path) as store:
        before = store.meta
    assert run_cli(*build_args(dataset, checkpoint, path)).exit_code == 0
    with TokenStore.open(path) as store:
        after = store.meta
        info = store_info(store)
    assert list(after) == BUILD_KEYS
    changed = {key for key in BUILD_KEYS if before[key] != after[key]}
    assert changed == {"build", "exactness"}  # same device, precision, torch: nothing else
    assert after["build"]["next_entry"] == after["build"]["split_entries"] == 24
    assert after["encoders"] == before["encoders"]  # the same encoder is not listed twice
    assert info["exactness_mode"] == "exact" and info["skipped"] == []
