"""The knobs a large fine-tune needs, on the tiny model on CPU: LoRA (peft) trains exactly the adapters'
parameters (counted by hand) and its merged model computes what base + adapter compute; activation
checkpointing changes no gradient; the attention kernel is the one asked for; a reward model refuses LoRA."""
import dataclasses

import pytest
import torch

from rlhf_ray import config_load, models
from rlhf_ray.config import ConfigError, ModelConfig, PipelineConfig, ScalingConfig, TrainConfig
from rlhf_ray.train.sft import SFTRecipe, micro_batch, sft_loss
from rlhf_ray.train import loop, sft_data

CONVS = [[{"role": "user", "content": "Color of the sky?"}, {"role": "assistant", "content": "Blue."}],
         [{"role": "user", "content": "Opposite of hot?"}, {"role": "assistant", "content": "Cold."}]]


def recipe(path, **train):
    return SFTRecipe(ModelConfig(name=str(path)), TrainConfig(**train), ScalingConfig())


def batch(tok):
    return micro_batch([sft_data.encode_sft_row({"messages": c}, tok, 256) for c in CONVS], True, tok.pad_token_id)["batch"]


def test_lora_trains_only_the_adapters_parameters_as_counted_by_hand(tiny_policy_dir):
    rec = recipe(tiny_policy_dir, lora_r=4)
    model = rec.load_model(rec.tokenizer(), None)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # Per block of the tiny Llama (hidden 64, MLP 128), rank 4: q, k, v, o are 64->64 (A 4x64 + B 64x4 = 512
    # each), gate and up 64->128 (256 + 512 = 768 each), down 128->64 (512 + 256 = 768): 4352; two blocks.
    assert sum(trainable.values()) == 2 * (4 * 512 + 2 * 768 + 768) == 8704
    assert all("lora_" in n for n in trainable)


def test_the_merged_model_computes_what_base_plus_adapter_compute(tiny_policy_dir, tmp_path):
    rec = recipe(tiny_policy_dir, lora_r=4, lora_alpha=8.0)
    tok = rec.tokenizer()
    model = rec.load_model(tok, None)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at zero: two steps make the adapter change the model
        loss, units = sft_loss(model, batch(tok))
        (loss / units).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    merged = models.merge_adapter(tmp_path / "adapter", tmp_path / "model")
    ids = torch.tensor([batch(tok)["input_ids"][0][:20].tolist()])
    with torch.no_grad():
        adapted = model.eval()(input_ids=ids).logits
        plain = models.load_policy(str(merged)).eval()(input_ids=ids).logits
        base = models.load_policy(str(tiny_policy_dir)).eval()(input_ids=ids).logits
    torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=1e-5)
    assert (plain - base).abs().max() > 1e-3  # the adapter did change the model
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()


def test_activation_checkpointing_changes_no_gradient(tiny_policy_dir):
    grads = []
    for checkpointing in (False, True):
        rec = recipe(tiny_policy_dir, gradient_checkpointing=checkpointing)
        tok = rec.tokenizer()
        model = rec.load_model(tok, None).train()
        if checkpointing:
            loop.checkpoint_activations(model)  # as runner.train_worker does
        models.disable_dropout(model)
        loss, units = sft_loss(model, batch(tok))
        (loss / units).backward()
        assert model.is_gradient_checkpointing == checkpointing
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_the_attention_kernel_is_the_one_asked_for(tiny_policy_dir):
    rec = SFTRecipe(ModelConfig(name=str(tiny_policy_dir), attn_implementation="eager"), TrainConfig(), ScalingConfig())
    assert rec.load_model(rec.tokenizer(), None).config._attn_implementation == "eager"


def test_a_reward_model_refuses_lora_in_one_line():
    with pytest.raises(ConfigError, match=r"reward.train.lora_r=8: LoRA trains policies here"):
        config_load.load(PipelineConfig, None, ["reward.train.lora_r=8"])
    cfg = config_load.load(PipelineConfig, None, ["sft.train.lora_r=8", "rs.train.gradient_checkpointing=true"])
    assert cfg.sft.train.lora_r == 8 and dataclasses.asdict(cfg.rs.train)["gradient_checkpointing"]


def test_a_reward_model_checkpoints_its_backbone_the_same_way(tiny_policy_dir):
    tok = models.chat_tokenizer(str(tiny_policy_dir))
    rm = models.load_reward_model(str(tiny_policy_dir), "bt", tok)
    loop.checkpoint_activations(rm)
    assert rm.backbone.is_gradient_checkpointing and not rm.backbone.config.use_cache
