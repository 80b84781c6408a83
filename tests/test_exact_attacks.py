"""Attacks on the exact-encode engine (vqvae/exact.py) as an unlucky or hostile user would make
them: each test failed before the fix named in its docstring."""
from __future__ import annotations

import threading

import torch

from vqvae import VQVAE, VQVAEConfig


def _fresh_thread_count() -> int:
    """The process-wide intra-op count: what a thread touching torch for the first time copies."""
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_an_encode_from_a_thread_with_an_older_count_leaves_the_process_setting_alone():
    """A host thread that first used torch while the count was 2 keeps 2 after the process sets
    3. An exact encode from that thread used to 'restore' the process-wide count to the thread's
    own 2 (fixed: the one-thread window runs in a fresh thread, which reads the process's 3)."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(quantizer="FSQ", nb_code=256, width=16, code_dim=8,
                              output_emb_width=8, depth=1, down_t=1, input_dim=6))
    x = torch.randn(2, 8, 6)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first_use, go, seen = threading.Event(), threading.Event(), {}

        def host_thread():
            seen["own"] = torch.get_num_threads()  # fixed at 2 for this thread's life
            first_use.set()
            go.wait()
            seen["codes"] = model.encode(x)
            seen["own_after"] = torch.get_num_threads()

        t = threading.Thread(target=host_thread)
        t.start()
        first_use.wait()
        torch.set_num_threads(3)
        go.set()
        t.join()
        assert seen["own"] == seen["own_after"] == 2
        assert torch.get_num_threads() == 3
        assert _fresh_thread_count() == 3
        assert torch.equal(seen["codes"], model.encode(x))
    finally:
        torch.set_num_threads(before)
