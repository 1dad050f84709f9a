"""The rank side of a :class:`attnsuite.distributed.launch.RankPool`: join the group, then run tasks.

Each rank process joins the process group once (NCCL on CUDA, gloo on CPU) and then serves
tasks until told to stop: a task is a module-level function ``task(ctx, payload) -> result`` run
on every rank with that rank's :class:`RankContext`. An exception in a task is sent back as text
naming the rank; the rank stays up for the next task.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from ..parent_watch import exit_with_parent
from .variant import RankContext

STOP = None  # the command that ends a rank's loop


def rank_main(rank: int, world_size: int, device: str, host: str, port: int, timeout_s: float,
              commands, results, parent_pid: int, sources: Optional[list]) -> None:
    """Entry point of one rank process (started by the pool, whose pid is ``parent_pid``; not called by users).

    ``sources``: for a spawned or fork-server rank, the external variant sources the parent loaded
    (``registry.external_sources()``), loaded here; None for a rank forked from the parent, which has them."""
    # a rank from a fork server is that server's child: it watches both (the server outlives no owner)
    exit_with_parent(os.getppid(), owner_pid=parent_pid if os.getppid() != parent_pid else None)
    try:
        # one intra-op thread per rank: P ranks share the host's cores, and a forked OpenMP pool is unsafe
        torch.set_num_threads(1)
        if device == "cuda":
            torch.cuda.set_device(rank)
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        torch_device = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
        if sources is not None:
            # a spawned rank starts with no modules (a fork-server one with the built-in variants
            # only): the variants its tasks receive unpickle from what the parent loaded, loaded again here
            from .. import registry

            for error in registry.load_like(sources):
                print(f"attnsuite rank {rank} of P={world_size}: could not load {error}", file=sys.stderr)
        results.put(("ready", rank, None, os.getpid()))
    except Exception:
        results.put(("error", rank, None, traceback.format_exc()))
        return
    while True:
        command = commands.get()
        if command is STOP:
            break
        task_id, task, payload = command
        ctx = RankContext(rank, world_size, torch_device)
        torch.set_grad_enabled(True)  # each task starts from the default, whatever the last one left
        try:
            results.put(("ok", rank, task_id, task(ctx, payload)))
        except Exception:
            results.put(("error", rank, task_id, traceback.format_exc()))
    try:
        dist.destroy_process_group()
    except Exception:  # a broken group (a peer died) need not be torn down cleanly
        pass
