"""The GPU check (``make gpu-check``): training, scoring and sharding on CUDA with only torch and
transformers installed (no Ray, no vLLM, no network). Skipped by pytest without CUDA; ``check.py`` runs
these functions on the GPU machine (with or without pytest) and writes bench/results/gpu_check.json."""
import os
import socket
import time

import pytest
import torch

import gpu_common as g
from reward_rows import A, BAD, GOOD, P, rows_for  # tests/
from rlhf_ray import models
from rlhf_ray.core import objectives as rm
from rlhf_ray.train import loop, sft_data
from rlhf_ray.train.reward import evaluate, loss_fn
from rlhf_ray.train.sft import micro_batch, sft_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not g.on_device(), reason="needs CUDA")]
BF16 = torch.bfloat16
CONVS = [[{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "It is 42."}],
         [{"role": "user", "content": "Which is a fruit: saw, plum?"}, {"role": "assistant", "content": "Plum."},
          {"role": "user", "content": "And the dog?"}, {"role": "assistant", "content": "The lazy dog."}],
         [{"role": "user", "content": "Step one?"}, {"role": "assistant", "content": "Step one is fine."}]]


def test_every_objective_trains_and_evaluates_with_bf16_autocast_keeping_fp32_weights(tmp_path):
    tok = g.tokenizer(str(tmp_path / "tok"))
    base = g.tiny_policy(str(tmp_path / "policy"), tok)
    figures = {}
    for objective in rm.OBJECTIVES:
        torch.manual_seed(0)
        model = models.load_reward_model(base, objective, tok).to(g.DEVICE)
        encoded = [rm.encode_row(r, objective, tok, None, 128) for r in rows_for(objective)]
        batch = rm.collate(encoded, objective, tok.pad_token_id)
        mb = [{"batch": batch, "units": rm.OBJECTIVES[objective].units(batch), "tokens": 0, "padding": 0}]
        opt = loop.build_optimizer(model, 3e-3, 0.0)
        sched = loop.build_scheduler(opt, 40, 0.0, "constant")
        first = loop.train_step(model, opt, sched, mb, loss_fn(objective), 1.0, g.DEVICE, BF16).loss
        for _ in range(40):
            last = loop.train_step(model, opt, sched, mb, loss_fn(objective), 1.0, g.DEVICE, BF16).loss
        held_out = evaluate(model, mb, objective, g.DEVICE, BF16)
        assert last < 0.5 * first, (objective, first, last)
        assert all(p.dtype == torch.float32 and p.device.type == g.DEVICE for p in model.parameters()), objective
        key = {"orm": "eval_auc", "prm": "eval_step_accuracy"}.get(objective, "eval_accuracy")
        assert held_out[key] == 1.0, (objective, held_out)
        figures[objective] = {"first_loss": round(first, 4), "last_loss": round(last, 4), key: held_out[key]}
    g.RESULTS["objectives"] = figures


def test_packed_and_padded_sft_losses_agree(tmp_path):
    tok = g.tokenizer(str(tmp_path / "tok"))
    examples = [sft_data.encode_sft_row({"messages": c}, tok, 256) for c in CONVS]
    model = models.tiny_causal_lm(tok, hidden_size=64, layers=2, heads=2).to(g.DEVICE).eval()
    out = {}
    with torch.no_grad():
        for dtype in (None, BF16):
            with loop.autocast_ctx(g.DEVICE, dtype):
                packed, n = sft_loss(model, loop.to_device(sft_data.pack(examples), g.DEVICE))
                padded, m = sft_loss(model, loop.to_device(sft_data.pad(examples, tok.pad_token_id), g.DEVICE))
            assert int(n) == int(m) > 0
            assert torch.allclose(packed, padded, rtol=1e-4 if dtype is None else 2e-2), (dtype, packed, padded)
            out[str(dtype or "float32")] = {"packed": float(packed), "padded": float(padded)}
    g.RESULTS["sft_packed_vs_padded"] = out


def test_a_bf16_autocast_step_counts_the_trained_tokens_by_hand(tmp_path):
    tok = g.tokenizer(str(tmp_path / "tok"))
    examples = [{"input_ids": list(range(5, 25)), "labels": [-100] * 10 + list(range(15, 25))},
                {"input_ids": list(range(30, 42)), "labels": [-100] * 4 + list(range(34, 42))}]
    model = models.tiny_causal_lm(tok).to(g.DEVICE)
    mb = [micro_batch(examples, True, tok.pad_token_id)]
    opt = loop.build_optimizer(model, 1e-3, 0.0)
    res = loop.train_step(model, opt, loop.build_scheduler(opt, 2, 0.0, "constant"), mb, sft_loss, 1.0, g.DEVICE, BF16)
    # 10 + 8 labelled tokens; each example's first label is never trained (nothing precedes it).
    assert res.units == 18 and res.loss > 0


def test_fp32_master_weights_move_where_bf16_weights_round_the_update_away(tmp_path):
    """What gsm8k-gpu.yaml had wrong: AdamW at lr 1e-6 on bfloat16 weights changes almost none of them."""
    tok = g.tokenizer(str(tmp_path / "tok"))
    examples = [sft_data.encode_sft_row({"messages": c}, tok, 256) for c in CONVS]
    moved = {}
    for name, dtype in (("float32_master_bf16_autocast", torch.float32), ("bfloat16_weights", BF16)):
        torch.manual_seed(0)
        model = models.tiny_causal_lm(tok, hidden_size=64, layers=2, heads=2).to(g.DEVICE, dtype)
        before = [p.detach().clone() for p in model.parameters()]
        opt = loop.build_optimizer(model, 1e-6, 0.0)
        sched = loop.build_scheduler(opt, 3, 0.0, "constant")
        for _ in range(3):
            loop.train_step(model, opt, sched, [micro_batch(examples, True, tok.pad_token_id)], sft_loss, 1.0,
                            g.DEVICE, BF16)
        changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
        moved[name] = changed / sum(b.numel() for b in before)
    assert moved["float32_master_bf16_autocast"] > 0.9 and moved["bfloat16_weights"] < 0.5, moved
    g.RESULTS["fraction_of_weights_moved_by_3_steps_at_lr_1e-6"] = moved


def test_the_scorer_runs_on_the_device_in_its_dtype(tmp_path):
    from rlhf_ray.engines.scorers import RewardScorer

    tok = g.tokenizer(str(tmp_path / "tok"))
    base = g.tiny_policy(str(tmp_path / "policy"), tok)
    models.load_reward_model(base, "bt", tok).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    answers = [A(t) for t in GOOD + BAD]
    reference = RewardScorer(str(tmp_path / "rm"), device="cpu").score([P] * 4, answers)
    scorer = RewardScorer(str(tmp_path / "rm"), dtype="bfloat16", batch_size=2)
    assert scorer.device.type == g.DEVICE and next(scorer.model.parameters()).dtype == BF16
    got = scorer.score([P] * 4, answers)
    assert got == pytest.approx(reference, abs=0.05 * max(map(abs, reference)) + 1e-3)
    g.RESULTS["scorer"] = {"device": str(scorer.device), "max_abs_diff_vs_cpu_fp32": max(
        abs(a - b) for a, b in zip(got, reference))}


def test_fsdp2_step_and_full_checkpoint_state_dict_at_world_size_1(tmp_path):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    tok = g.tokenizer(str(tmp_path / "tok"))
    base = str(tmp_path / "rm")  # saved with its head, so that both runs start from the same weights
    models.load_reward_model(g.tiny_policy(str(tmp_path / "policy"), tok), "bt", tok).save_pretrained(base)
    tok.save_pretrained(base)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if g.DEVICE == "cuda" else "gloo", rank=0, world_size=1)
    try:
        rows = rows_for("bt")
        encoded = [rm.encode_row(r, "bt", tok, None, 128) for r in rows]
        batch = rm.collate(encoded, "bt", tok.pad_token_id)
        mb = [{"batch": batch, "units": len(rows), "tokens": 0, "padding": 0}]
        params = {}
        for strategy in ("plain", "fsdp"):
            model = models.load_reward_model(base, "bt", tok)
            model = loop.shard_model(model, g.DEVICE) if strategy == "fsdp" else model.to(g.DEVICE)
            opt = torch.optim.SGD(model.parameters(), lr=1.0)
            loop.train_step(model, opt, loop.build_scheduler(opt, 2, 0.0, "constant"), mb, loss_fn("bt"), 1e9,
                            g.DEVICE, BF16)
            params[strategy] = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                                    cpu_offload=True))
        sharded = sum(type(m).__name__.startswith("FSDP") for m in model.modules())
        assert sharded == 3  # two decoder layers and the root
        assert params["plain"].keys() == params["fsdp"].keys()
        for k, v in params["plain"].items():
            assert torch.allclose(params["fsdp"][k], v, atol=1e-5), k
        # The checkpoint the runner writes from the gathered state dict reloads as the same model.
        model.save_pretrained(tmp_path / "ckpt", state_dict=params["fsdp"])
        again = models.load_reward_model(str(tmp_path / "ckpt"), "bt", tok)
        for k, v in again.state_dict().items():
            assert torch.equal(v, params["fsdp"][k]), k
    finally:
        dist.destroy_process_group()
    g.RESULTS["fsdp2"] = {"backend": "nccl" if g.DEVICE == "cuda" else "gloo", "sharded_modules": sharded}


def test_a_1_5b_model_trains_in_fp32_masters_with_bf16_autocast_peak_memory_and_tokens_per_s():
    """Qwen2.5-1.5B's shape with random weights: the GPU config's RS fine-tune (AdamW, float32 masters,
    bf16 autocast, packed sequences), its peak memory and speed."""
    if g.DEVICE != "cuda":
        pytest.skip("a 1.5B model on a CPU smoke run would take hours")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to("cuda")
    model.gradient_checkpointing_enable()
    params = sum(p.numel() for p in model.parameters())
    seq, rows = 2048, 4
    examples = [{"input_ids": torch.randint(0, 151936, (seq,)).tolist(), "labels": torch.randint(0, 151936, (seq,)).tolist()}
                for _ in range(rows)]
    mb = [micro_batch([e], True, 0) for e in examples]  # 4 sequences of 2048 tokens, accumulated
    opt = loop.build_optimizer(model, 1e-6, 0.0)
    sched = loop.build_scheduler(opt, 10, 0.0, "constant")
    torch.cuda.reset_peak_memory_stats()
    loop.train_step(model, opt, sched, mb, sft_loss, 1.0, "cuda", BF16)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start, steps = time.perf_counter(), 3
    for _ in range(steps):
        res = loop.train_step(model, opt, sched, mb, sft_loss, 1.0, "cuda", BF16)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    assert res.loss > 0 and all(p.dtype == torch.float32 for p in model.parameters())
    g.RESULTS["qwen2.5_1.5b_shape"] = {
        "parameters": params, "sequence_tokens": seq, "sequences_per_step": rows, "gradient_checkpointing": True,
        "peak_memory_gib": round(peak, 2), "tokens_per_s": round(steps * seq * rows / seconds, 1),
        "seconds_per_step": round(seconds / steps, 3)}
