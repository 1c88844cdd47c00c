"""The framework-free SFT step: masking, packing, global-batch normalisation, learning to answer."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_ray import models
from rlhf_ray.core import chat, losses
from rlhf_ray.train import loop, sft_data
from rlhf_ray.train.sft import micro_batch, sft_loss

CONVS = [
    [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Color of the sky?"},
     {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Opposite of hot?"}, {"role": "assistant", "content": "Cold."}],
    [{"role": "user", "content": "Capital of Japan?"}, {"role": "assistant", "content": "Tokyo."},
     {"role": "user", "content": "And of Peru?"}, {"role": "assistant", "content": "Lima."}],
    [{"role": "user", "content": "Largest planet?"}, {"role": "assistant", "content": "Jupiter."}],
]


@pytest.fixture
def examples(smol_tokenizer):
    return [sft_data.encode_sft_row({"messages": c}, smol_tokenizer, 512) for c in CONVS]


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return models.tiny_causal_lm(tok, hidden_size=64, layers=2, seed=seed)


def test_packed_loss_equals_one_by_one(smol_tokenizer, examples):
    model = tiny(smol_tokenizer).eval()
    for impl in ("sdpa", "eager"):
        model.config._attn_implementation = impl
        packed_sum, packed_n = sft_loss(model, sft_data.pack(examples))
        alone = [sft_loss(model, sft_data.pad([e], smol_tokenizer.pad_token_id)) for e in examples]
        assert int(packed_n) == sum(int(n) for _, n in alone)
        assert torch.allclose(packed_sum, sum(s for s, _ in alone), rtol=1e-5), impl
        padded_sum, _ = sft_loss(model, sft_data.pad(examples, smol_tokenizer.pad_token_id))
        assert torch.allclose(padded_sum, packed_sum, rtol=1e-5)


def test_user_and_system_tokens_never_receive_gradient(smol_tokenizer, examples):
    model = tiny(smol_tokenizer)
    batch = sft_data.pack(examples)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    losses.sft_nll(logits, batch["labels"]).backward()
    grad_per_position = logits.grad[0].abs().sum(-1)            # position t predicts token t + 1
    trained_next = (batch["labels"][0, 1:] != chat.IGNORE_INDEX)
    assert torch.all(grad_per_position[:-1][~trained_next] == 0)
    assert torch.all(grad_per_position[:-1][trained_next] > 0)


def params_after_one_step(tok, groups_of_examples, packing):
    # Plain SGD: the update is the gradient itself (Adam's first step is sign-like and hides errors).
    model = tiny(tok)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = loop.build_scheduler(opt, 10, 0.0, "constant")
    mbs = [micro_batch(g, packing, tok.pad_token_id) for g in groups_of_examples]
    loop.train_step(model, opt, sched, mbs, sft_loss, 1e9, "cpu")
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_equals_one_big_batch(smol_tokenizer, examples):
    big = params_after_one_step(smol_tokenizer, [examples], packing=True)
    accumulated = params_after_one_step(smol_tokenizer, [examples[:1], examples[1:]], packing=True)
    padded = params_after_one_step(smol_tokenizer, [examples[:3], examples[3:]], packing=False)
    assert torch.allclose(big, accumulated, atol=1e-6)
    assert torch.allclose(big, padded, atol=1e-6)


def _ddp_worker(rank, world, port, tok_dir, examples, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = torch.nn.parallel.DistributedDataParallel(tiny(tok))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = loop.build_scheduler(opt, 10, 0.0, "constant")
    # Uneven shares on purpose: rank 0 gets 1 conversation, rank 1 gets 3 (different token counts).
    mine = examples[:1] if rank == 0 else examples[1:]
    loop.train_step(model, opt, sched, [micro_batch(mine, True, tok.pad_token_id)], sft_loss, 1e9, "cpu")
    if rank == 0:
        torch.save(torch.cat([p.detach().flatten() for p in model.module.parameters()]), out)
    dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts then)
    dist.destroy_process_group()


def test_data_parallel_equals_one_big_batch(smol_tokenizer, examples, policy_dir, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(policy_dir), examples, str(out)), nprocs=2, join=True)
    big = params_after_one_step(smol_tokenizer, [examples], packing=True)
    assert torch.allclose(torch.load(out), big, atol=1e-6)


def test_tiny_model_learns_the_answers_and_greedy_decoding_reproduces_them(smol_tokenizer, examples):
    model = tiny(smol_tokenizer, seed=1)
    opt = loop.build_optimizer(model, 3e-3, 0.0)
    sched = loop.build_scheduler(opt, 300, 0.05, "constant")
    mb = [micro_batch(examples, True, smol_tokenizer.pad_token_id)]
    for _ in range(300):
        res = loop.train_step(model, opt, sched, mb, sft_loss, 1.0, "cpu")
        if res.loss < 0.01:
            break
    assert res.loss < 0.05
    model.eval()
    for conv in CONVS:
        prompt = chat.render_prompt(conv[:-1], smol_tokenizer)
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                             eos_token_id=chat.end_of_turn_ids(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id)
        answer = smol_tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        assert answer == conv[-1]["content"]


def test_scheduler_warmup_then_linear_and_cosine_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    for schedule, mid in (("linear", 0.5), ("cosine", 0.5)):
        opt = torch.optim.SGD([p], lr=1.0)
        sched = loop.build_scheduler(opt, 11, 1 / 11, schedule)
        lrs = []
        for _ in range(11):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] == pytest.approx(0.1 if schedule == "linear" else 0.0245, abs=1e-3)
        assert lrs[6] == pytest.approx(mid)


def _fsdp_worker(rank, world, port, tok_dir, examples, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = loop.shard_model(tiny(tok), "cpu")
    sharded = sum(type(m).__name__.startswith("FSDP") for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = loop.build_scheduler(opt, 10, 0.0, "constant")
    mine = examples[:1] if rank == 0 else examples[1:]
    res = loop.train_step(model, opt, sched, [micro_batch(mine, True, tok.pad_token_id)], sft_loss, 1e9, "cpu")
    # Every rank takes part in gathering the full weights, as the runner's checkpoint does.
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"params": torch.cat([full[n].flatten() for n, _ in model.named_parameters()]),
                    "sharded_modules": sharded, "grad_norm": res.grad_norm}, out)
    dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts then)
    dist.destroy_process_group()


def test_fsdp_equals_one_big_batch(smol_tokenizer, examples, policy_dir, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp.pt"
    mp.spawn(_fsdp_worker, args=(2, port, str(policy_dir), examples, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert got["sharded_modules"] == 3  # two decoder layers and the root
    big = params_after_one_step(smol_tokenizer, [examples], packing=True)
    assert torch.allclose(got["params"], big, atol=1e-6)
    assert got["grad_norm"] > 0
