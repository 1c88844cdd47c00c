"""Reward models train data-parallel correctly: for every objective, on a decoder and a mean-pooled
encoder backbone, with DDP and with FSDP2, two gloo ranks each holding part of a global batch take the
same optimizer step as one process holding all of it (as SFT's proof in test_sft_training does), on packed
micro-batches (reward.train.packing, the default) whose rows hold sequences of different lengths."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_ray import models
from rlhf_ray.core import objectives as rm
from rlhf_ray.train import loop
from rlhf_ray.train.reward import evaluate, loss_fn
from reward_rows import varied  # tests/

DECODER = ("bt", "margin", "kwise", "plackett_luce", "orm", "prm")
ENCODER = ("bt", "margin", "kwise", "plackett_luce")  # scalar heads over mean pooling
CASES = [("decoder", o) for o in DECODER] + [("encoder", o) for o in ENCODER]


def micro_batch(rows, objective, tok):
    encoded = [rm.encode_row(r, objective, tok, None, 256) for r in rows]
    batch = rm.collate(encoded, objective, tok.pad_token_id, packing=True)
    return {"batch": batch, "units": rm.OBJECTIVES[objective].units(batch), "tokens": 0, "padding": 0}


def one_step(model, mbs, objective):
    # Plain SGD: the update is the gradient itself (Adam's first step is sign-like and hides errors).
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = loop.build_scheduler(opt, 10, 0.0, "constant")
    return loop.train_step(model, opt, sched, mbs, loss_fn(objective, center_coef=0.01), 1e9, "cpu")


def _worker(rank, world, port, strategy, dirs, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    results = {}
    for kind, objective in CASES:
        path = dirs[(kind, objective)]
        tok = models.load_tokenizer(path)
        model = models.load_reward_model(path, objective, tok)
        model = loop.shard_model(model, "cpu") if strategy == "fsdp" else torch.nn.parallel.DistributedDataParallel(model)
        rows = varied(objective)
        mine = rows[:1] if rank == 0 else rows[1:]  # uneven shares: different unit counts per rank
        res = one_step(model, [micro_batch(mine, objective, tok)], objective)
        held_out = evaluate(model, [micro_batch(mine, objective, tok)], objective, "cpu")
        # Every rank takes part in gathering the full weights, as the runner's checkpoint does.
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        results[(kind, objective)] = {"params": {k: v.clone() for k, v in full.items()}, "loss": res.loss,
                                      "held_out": held_out}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts then)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory, tiny_policy_dir):
    """Saved reward models (heads included) so that every process starts from the same weights."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("rms")
    tok = models.load_tokenizer(str(tiny_policy_dir))
    enc_tok = models.load_tokenizer(str(models.default_rm_dir()))
    torch.manual_seed(0)
    encoder = root / "encoder_base"
    BertForSequenceClassification(BertConfig(vocab_size=len(enc_tok), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, num_labels=1)
                                  ).save_pretrained(encoder)
    enc_tok.save_pretrained(encoder)
    dirs = {}
    for kind, objective in CASES:
        base, t = (str(tiny_policy_dir), tok) if kind == "decoder" else (str(encoder), enc_tok)
        path = root / f"{kind}_{objective}"
        models.load_reward_model(base, objective, t).save_pretrained(path)
        t.save_pretrained(path)
        dirs[(kind, objective)] = str(path)
    return dirs


@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_take_the_step_of_one_big_batch_for_every_objective(rm_dirs, strategy, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks.pt"
    mp.spawn(_worker, args=(2, port, strategy, rm_dirs, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert set(got) == set(CASES) and len(got) == 10
    for case in CASES:
        kind, objective = case
        path = rm_dirs[case]
        tok = models.load_tokenizer(path)
        model = models.load_reward_model(path, objective, tok)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rows = varied(objective)
        res = one_step(model, [micro_batch(rows, objective, tok)], objective)
        held_out = evaluate(model, [micro_batch(rows, objective, tok)], objective, "cpu")
        after = model.state_dict()
        assert set(got[case]["params"]) == set(after), case
        moved = 0
        for name, value in after.items():
            assert torch.allclose(got[case]["params"][name], value, atol=1e-5), (case, name)
            moved += not torch.equal(value, before[name])
        assert moved > 0, case  # the step changed the weights: equality above is not of two untouched models
        assert got[case]["loss"] == pytest.approx(res.loss, rel=1e-5), case
        # Held-out figures gathered over ranks are those of the one model.
        for key, value in held_out.items():
            assert got[case]["held_out"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (case, key)
