"""GPU checks of the framework-free training step (skipped without CUDA)."""
import pytest
import torch

from rlhf_ray import models
from rlhf_ray.train import loop
from rlhf_ray.train.sft import micro_batch, sft_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_autocast_packed_step_matches_fp32_loss(smol_tokenizer):
    examples = [{"input_ids": list(range(5, 25)), "labels": [-100] * 10 + list(range(15, 25))},
                {"input_ids": list(range(30, 42)), "labels": [-100] * 4 + list(range(34, 42))}]
    model = models.tiny_causal_lm(smol_tokenizer).cuda()
    mb = [micro_batch(examples, True, smol_tokenizer.pad_token_id)]
    with torch.no_grad():
        fp32, _ = sft_loss(model, loop.to_device(mb[0]["batch"], "cuda"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16, _ = sft_loss(model, loop.to_device(mb[0]["batch"], "cuda"))
    assert torch.allclose(fp32, bf16, rtol=2e-2)
    opt = loop.build_optimizer(model, 1e-3, 0.0)
    sched = loop.build_scheduler(opt, 2, 0.0, "constant")
    res = loop.train_step(model, opt, sched, mb, sft_loss, 1.0, "cuda", torch.bfloat16)
    assert res.units == 17 and res.loss > 0
