"""FSDP2 full fine-tune on two processes (checkpointed) equals plain data parallelism (manual gradient averaging)."""

import torch

from tests.core.test_trainer import manifest  # noqa: F401  (the small image manifest fixture)
from tests.core.test_trainer_distributed import run_two_ranks


def test_fsdp_matches_data_parallel_and_resumes(tmp_path, manifest):  # noqa: F811
    full = ["lora.enabled=false", "optim.lr=1e-3", "optim.fake_lr=1e-3", "train.save_every=1"]
    dp = run_two_ranks(tmp_path / "dp", manifest, extra=full)
    # FSDP as the multi-GPU recipe runs it, with gradient checkpointing of all three copies (the data-parallel
    # run has it off): neither sharding nor checkpointing may change the result.
    sharded = full + ["train.fsdp=true", "train.gradient_checkpointing=true"]
    fsdp = run_two_ranks(tmp_path / "fsdp", manifest, extra=sharded)
    assert dp[0]["sharded_params"] == 0 and fsdp[0]["sharded_params"] > 0  # FSDP really sharded the blocks
    # Same seeds, same data, same maths: sharding must not change the result.
    for role in ("editor", "fake"):
        assert dp[0][role].keys() == fsdp[0][role].keys()
        for k in dp[0][role]:
            assert torch.allclose(dp[0][role][k], fsdp[0][role][k], atol=1e-5), (role, k)
            assert torch.equal(fsdp[0][role][k], fsdp[1][role][k]), (role, k)
    # The FSDP checkpoint holds full weights and resumes: two more steps from step 2.
    resumed = run_two_ranks(tmp_path / "fsdp", manifest, extra=sharded + ["train.steps=4"], reuse=True)
    assert resumed[0]["step"] == 4
    assert any(not torch.equal(resumed[0]["editor"][k], fsdp[0]["editor"][k]) for k in fsdp[0]["editor"])
