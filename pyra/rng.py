"""One lock for torch's global random generator, shared by every thread of the process.

Building a model seeds the global generator and draws from it; training draws from it in every
forward (dropout, drop-path). Two threads doing either at once interleave their draws: a model
built while another job runs gets other random weights, and a "random:" backbone rebuilt by
`load_run` no longer matches its fingerprint. Seeding and drawing under `RNG_LOCK` keeps each
sequence whole.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

RNG_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global CPU generator seeded with `seed`, with no other thread drawing;
    the generator's previous state is restored afterwards."""
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
