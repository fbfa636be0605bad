"""Two gloo processes train the codebooks in step: identical codebooks, equal to one process on the
concatenated batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rq_hf.quantizer import ResidualQuantizer

WORLD_SIZE = 2


def make_quantizer(restart: bool) -> ResidualQuantizer:
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(dim=4, num_quantizers=3, codebook_size=16, restart_unused_codes=restart)
    return quantizer.train()


def full_batch() -> torch.Tensor:
    return torch.randn(4, 4, 6, 6, generator=torch.Generator().manual_seed(1))


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        shard = full_batch().chunk(WORLD_SIZE)[rank]
        # 1) live codes only: the step must equal one process on the whole batch
        quantizer = make_quantizer(restart=True)
        for codebook in quantizer.codebooks:
            codebook.cluster_size_ema.fill_(100.0)
        quantizer(shard)
        # 2) restarts with rank-dependent randomness: ranks still end identical (rank 0's candidates)
        restarting = make_quantizer(restart=True)
        torch.manual_seed(100 + rank)
        restarting(shard)
        torch.save(
            {"live": quantizer.state_dict(), "restart": restarting.state_dict()},
            os.path.join(result_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_keep_identical_codebooks_equal_to_a_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]

    single = make_quantizer(restart=True)
    for codebook in single.codebooks:
        codebook.cluster_size_ema.fill_(100.0)
    single(full_batch())

    for kind in ("live", "restart"):
        for key, value in ranks[0][kind].items():
            assert torch.equal(value, ranks[1][kind][key]), f"{kind}: {key} differs between ranks"
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0]["live"][key], value, rtol=1e-5, atol=1e-6)
    restarted = ranks[0]["restart"]["codebooks.0.cluster_size_ema"]
    assert (restarted == 1).any(), "the restart case must actually restart codes"
