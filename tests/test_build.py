"""`tokstore build` and `tokstore demo` through the CLI: golden codes, model flags, layouts,
provenance refusal, no-op re-runs, and settings that must not change the result."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from build_helpers import (assert_same_store, build_args, build_first_entries, contents, run_cli,
                           tiny_built, tiny_config, tiny_setup)

from tokstore import TokenStore
from tokstore.demo import save_random_checkpoint
from tokstore.synthetic import make_dataset
from vqvae import VQVAEConfig

# the flags of ../shared/golden/README.md, as a user pastes them (its quantizer column included)
GOLDEN_FLAGS = {
    "fsq64000": "--quantizer FSQ --nb-code 65536 --code-dim 128 --output-emb-width 128 --width 128 "
                "--down-t 1 --stride-t 2 --depth 3 --dilation-growth-rate 3 --vq-act relu "
                "--vq-norm LN --kernel-size 3 --use_patcher --patch_size 1 --patch_method haar",
    "ema512": "--quantizer ema_reset --nb-code 512 --code-dim 64 --output-emb-width 64 --width 64 "
              "--down-t 2 --stride-t 2 --depth 2 --dilation-growth-rate 3 --vq-act relu "
              "--kernel-size 3",
}


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_golden_codes_and_counts(golden, backend, tmp_path):
    path, info = golden
    store = tmp_path / "store"
    result = run_cli("build", "--root", path / "dataset", "--checkpoint", path / "checkpoint.pth",
                     "--store", store, "--backend", backend, "--workers", "2",
                     *GOLDEN_FLAGS[path.name].split())
    assert result.exit_code == 0, result.output
    with TokenStore.open(store) as s:
        assert s.backend == backend
        assert s.names == info["names"]  # split order
        assert s.codebook_size == info["codebook_size"]
        legacy = np.dtype(s.meta["legacy_code_dtype"])
        assert legacy == np.dtype(info["code_dtype"])
        for name in info["names"]:
            expected = np.load(path / "expected" / "codes" / f"{name}.npy")
            got = s[name].codes.astype(legacy)[None]
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert np.array_equal(got, expected), name
        prob = torch.load(path / "expected" / "prob.npy")
        counts = s.counts
        assert np.array_equal((counts / counts.sum()).astype(np.float32), prob.numpy())
        assert counts.sum() == info["total_tokens"]
        assert s.meta["crop_policy"] == "start0" and s.meta["precision"] == "fp32"
    assert f"built {store}: {len(info['names'])} samples" in result.output


def test_summary_and_provenance(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path)
    store = tmp_path / "s.zarr"
    result = run_cli(*build_args(dataset, checkpoint, store))
    assert result.exit_code == 0, result.output
    codes = sum(f // 2 for f in dataset.frames)
    assert (f"built {store}: 24 samples, {codes} codes; this run encoded 24 motions, "
            f"{2 * codes} frames in") in result.output
    with TokenStore.open(store) as s:
        meta = s.meta
    assert meta["model_config"]["width"] == 32 and meta["model_config"]["quantizer"] == "FSQ"
    assert meta["legacy_code_dtype"] == "int32"
    assert len(meta["checkpoint_sha256"]) == 64 and len(meta["stats_sha256"]) == 64
    assert meta["device"] == "cpu"
    assert meta["source_paths"]["split_file"].endswith("split/version1/t2m_60_300/all.txt")
    assert meta["skipped"] == [] and meta["build"]["complete"]


def test_rerun_of_a_finished_build_is_a_no_op(copy_of_made, tmp_path):
    dataset, checkpoint, store = tiny_built(copy_of_made, tmp_path)
    before = contents(store)
    record = (store / "zarr.json").read_bytes()
    result = run_cli(*build_args(dataset, checkpoint, store))
    assert result.exit_code == 0, result.output
    assert "already complete" in result.output and "encoded" not in result.output
    assert (store / "zarr.json").read_bytes() == record  # not even a commit
    assert contents(store)["names"] == before["names"]


def _other_checkpoint(tmp_path, dataset, checkpoint):
    other = tmp_path / "other.pth"
    save_random_checkpoint(other, tiny_config(), seed=1)
    return build_args(dataset, other, tmp_path / "s.zarr"), "different checkpoint"


def _other_config(tmp_path, dataset, checkpoint):
    # the dilation growth leaves no trace in the weights: the checkpoint loads, the codes differ
    return (build_args(dataset, checkpoint, tmp_path / "s.zarr", "--dilation-growth-rate", "2"),
            "different model config (--dilation-growth-rate 3 -> 2)")


def _other_stats(tmp_path, dataset, checkpoint):
    std = np.load(dataset.layout.std_file)
    np.save(dataset.layout.std_file, std * 1.01)
    return build_args(dataset, checkpoint, tmp_path / "s.zarr"), "different normalization statistics"


def _other_precision(tmp_path, dataset, checkpoint):
    return (build_args(dataset, checkpoint, tmp_path / "s.zarr", "--precision", "bf16"),
            "holds exact codes and this run would add inexact cpu bf16 codes")


@pytest.mark.parametrize("change", [_other_checkpoint, _other_config, _other_stats, _other_precision])
@pytest.mark.parametrize("finished", [True, False])
def test_refuses_a_store_built_differently(copy_of_made, tmp_path, change, finished):
    # unfinished: a store holding the first half of the split, as a build stopped half-way leaves it
    dataset, checkpoint, store = tiny_built(copy_of_made, tmp_path, first=None if finished else 12)
    before = contents(store)
    args, message = change(tmp_path, dataset, checkpoint)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert ("--allow-mixed-codes" if change is _other_precision else "stale") in result.output
    after = contents(store)
    assert after["names"] == before["names"] and np.array_equal(after["counts"], before["counts"])


def test_a_grown_split_continues_the_store(copy_of_made, tmp_path):
    dataset, checkpoint, once = tiny_built(copy_of_made, tmp_path)  # the whole split in one run
    grown = tmp_path / "grown.zarr"
    build_first_entries(dataset, checkpoint, grown)
    result = run_cli(*build_args(dataset, checkpoint, grown))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "this run encoded 14 motions (resumed after 10)" in result.output
    assert_same_store(grown, once)


def test_a_store_from_another_split_is_refused(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path)
    split = dataset.layout.split_file
    names = dataset.names
    split.write_text("".join(f"{n}\n" for n in names[12:]))
    store = tmp_path / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, store)).exit_code == 0
    split.write_text("".join(f"{n}\n" for n in names))
    result = run_cli(*build_args(dataset, checkpoint, store))
    assert result.exit_code == 1
    assert "not this split's first" in result.output


@pytest.mark.parametrize("settings", [
    ["--workers", "2"],
    ["--workers", "2", "--batch-frames", "50", "--window", "5", "--commit-every", "3"],
    ["--batch-frames", "1", "--window", "1"],
])
def test_loading_and_batching_settings_do_not_change_the_store(copy_of_made, tmp_path, settings):
    dataset, checkpoint, store = tiny_built(copy_of_made, tmp_path)
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "b.zarr", *settings))
    assert result.exit_code == 0, result.output
    assert_same_store(store, tmp_path / "b.zarr")


def test_backends_hold_the_same_store(copy_of_made, tmp_path):
    dataset, checkpoint, zarr_store = tiny_built(copy_of_made, tmp_path)
    assert run_cli(*build_args(dataset, checkpoint, tmp_path / "b.h5")).exit_code == 0
    with TokenStore.open(tmp_path / "b.h5") as s:
        assert s.backend == "hdf5"  # chosen by the suffix
    assert_same_store(zarr_store, tmp_path / "b.h5")
    # and a finished hdf5 build is a no-op too
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "b.h5"))
    assert result.exit_code == 0 and "already complete" in result.output


def test_reduced_precision_prints_its_agreement(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path)
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--precision", "bf16"))
    assert result.exit_code == 0, result.output
    assert "precision bf16 on cpu: " in result.output
    assert "codes equal to the exact codes on 16 motions" in result.output
    assert result.output.count("codes: NOT exact (cpu bf16)") == 1
    with TokenStore.open(tmp_path / "s.zarr") as s:
        assert s.meta["precision"] == "bf16" and len(s) == 24
        assert s.meta["exactness_mode"] == "inexact cpu bf16"
        agreement = s.meta["exactness"]["agreement"]
        assert agreement["motions"] == 16 and 0 < agreement["equal"] <= agreement["codes"]


def test_model_flags_are_checked(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--widht", "32"))
    assert result.exit_code == 1 and "unknown model flag '--widht'" in result.output
    result = run_cli("build", "--root", dataset.root, "--checkpoint", checkpoint,
                     "--store", tmp_path / "s.zarr")
    assert result.exit_code == 1 and "name the model" in result.output
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--precision", "fp16"))
    assert result.exit_code == 1 and "precision must be one of fp32, tf32, bf16" in result.output
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--device", "tpu:x"))
    assert result.exit_code == 1 and "unknown device 'tpu:x'" in result.output
    if not torch.cuda.is_available():
        result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--device", "cuda"))
        assert result.exit_code == 1 and "no CUDA device is available" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_checkpoint_that_does_not_fit_the_config(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--width", "48"))
    assert result.exit_code == 1
    assert "does not fit the config" in result.output and "--width (config 48, checkpoint 32)" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_humanml_kit_layout_and_explicit_paths(tmp_path):
    """--dataname kit: new_joint_vecs/, texts/, all.txt, Mean/Std.npy at the root, 251 features
    (set by the layout, the preset says 263); then the same files through the explicit overrides."""
    made = make_dataset(tmp_path / "mm", 10, lengths=(16, 40), input_dim=251, motion_type="joints")
    kit = tmp_path / "kit"
    kit.mkdir()
    shutil.move(made.layout.motion_dir, kit / "new_joint_vecs")
    shutil.move(made.layout.text_dir, kit / "texts")
    shutil.copy(made.layout.split_file, kit / "all.txt")
    shutil.copy(made.layout.mean_file, kit / "Mean.npy")
    shutil.copy(made.layout.std_file, kit / "Std.npy")
    model = ["--preset", "t2m-gpt", "--width", "32", "--code-dim", "32", "--output-emb-width", "32"]
    config = VQVAEConfig.from_flags(VQVAEConfig.preset("t2m-gpt").to_flags() + model[2:]
                                    + ["--input-dim", "251"])
    save_random_checkpoint(tmp_path / "kit.pth", config)
    common = ["--checkpoint", tmp_path / "kit.pth", "--workers", "0", *model]
    result = run_cli("build", "--root", kit, "--dataname", "kit", "--store", tmp_path / "a.zarr", *common)
    assert result.exit_code == 0, result.output
    with TokenStore.open(tmp_path / "a.zarr") as s:
        assert s.names == made.names and s.codebook_size == 512
        assert s.meta["model_config"]["input_dim"] == 251 and s.meta["legacy_code_dtype"] == "int64"
        assert all(len(s.codes(i)) == f // 4 for i, f in enumerate(made.frames))

    subset = tmp_path / "subset.txt"
    subset.write_text("".join(f"{n}\n" for n in made.names[::2]))
    result = run_cli("build", "--split", subset, "--motion-dir", kit / "new_joint_vecs",
                     "--text-dir", kit / "texts", "--mean", kit / "Mean.npy", "--std", kit / "Std.npy",
                     "--store", tmp_path / "b.zarr", "--input-dim", "251", *common)
    assert result.exit_code == 0, result.output
    a, b = contents(tmp_path / "a.zarr"), contents(tmp_path / "b.zarr")
    assert b["names"] == made.names[::2]
    assert all(np.array_equal(x, y) for x, y in zip(a["codes"][::2], b["codes"]))


def test_demo(tmp_path):
    result = run_cli("demo", "--dir", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "tokstore build --root" in result.output and "--use_patcher" in result.output
    assert "samples:      48\n" in result.output
    assert "codebook:     64000 codes, end token 64000, pad token 64001" in result.output
    with TokenStore.open(tmp_path / "demo" / "store.zarr") as s:
        first = s[0]
        assert f"example:      {first.name!r}: {len(first.codes)} codes: {first.codes[0]} " in result.output
        assert f"tokens:       {int(s.lengths.sum()) + len(s)} " in result.output
        assert f"  caption     {first.texts[0].rstrip()}" in result.output
        assert s.meta["model_config"]["nb_code"] == 65536 and s.meta["model_config"]["width"] == 64
    again = run_cli("demo", "--dir", tmp_path / "demo")
    assert again.exit_code == 0 and "already complete" in again.output
