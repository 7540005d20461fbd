"""Codebooks stay identical across ranks and equal to one process on the concatenated batch.

Two gloo processes on the CPU run k-means initialisation, EMA updates and dead-code restarts,
including a step where rank 1's batch is empty.
"""

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from vqkit.quantizers import ResidualVQ, TopKCodebook, VectorQuantizer

WORLD_SIZE = 2
STEPS = 8
EMPTY_STEP = 5  # rank 1 gets no rows at this step


def build(kind):
    torch.manual_seed(0)
    if kind == "vq":
        return VectorQuantizer(8, 32, dead_code_threshold=2)
    if kind == "rvq":
        return ResidualVQ(8, 32, depth=3, dead_code_threshold=2)
    return TopKCodebook(8, 32, k=2, kmeans_init=True, dead_code_threshold=2)


def full_batch(step):
    """(96, 8) rows; the distribution drifts after step 3 so that some codes die and restart."""
    generator = torch.Generator().manual_seed(100 + step)
    centres = torch.randn(6, 8, generator=generator) * 3 + (10.0 if step > 3 else 0.0)
    labels = torch.randint(6, (96,), generator=generator)
    return centres[labels] + torch.randn(96, 8, generator=generator)


def shard(step, rank):
    rows = full_batch(step)
    split = 96 if step == EMPTY_STEP else 64
    return rows[:split] if rank == 0 else rows[split:]


def run_steps(quantizer, batches):
    dead_total = 0
    for batch in batches:
        dead_total += int(quantizer(batch).dead_codes)
    return dead_total


def ddp_worker(rank, kind, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        quantizer = build(kind)
        dead_total = run_steps(quantizer, [shard(step, rank) for step in range(STEPS)])
        state = {name: tensor.float() for name, tensor in quantizer.state_dict().items()}
        state["dead_total"] = torch.tensor(float(dead_total))
        save_file(state, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vq", "rvq", "topk"])
def test_ddp_codebooks_match_single_process(kind, tmp_path):
    mp.start_processes(
        ddp_worker, args=(kind, tmp_path / "init", tmp_path), nprocs=WORLD_SIZE, start_method="spawn", join=True
    )
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")

    single = build(kind)
    dead_total = run_steps(single, [full_batch(step) for step in range(STEPS)])
    reference = {name: tensor.float() for name, tensor in single.state_dict().items()}

    assert dead_total > 0, "the scenario should exercise dead-code restarts"
    assert rank0["dead_total"].item() == dead_total
    for name, expected in reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
        assert torch.allclose(rank0[name], expected, rtol=1e-5, atol=1e-5), f"{name} differs from one process"
