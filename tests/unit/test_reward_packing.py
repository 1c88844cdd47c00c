"""Packed reward-model batches (``objectives.pack_rows``, ``reward.train.packing``) compute what padded ones
do: the same scores, loss, gradients and held-out figures for every objective, on a decoder (causal block
mask) and a mean-pooled encoder (bidirectional), under SDPA and eager attention."""
import pytest
import torch

from rlhf_ray import models
from rlhf_ray.core import objectives as rm
from rlhf_ray.train.reward import evaluate, loss_fn
from reward_rows import varied  # tests/

DECODER = ("bt", "margin", "kwise", "plackett_luce", "orm", "prm")
ENCODER = ("bt", "margin", "kwise", "plackett_luce")
CASES = [(k, o, a) for a in ("sdpa", "eager") for k, objs in (("decoder", DECODER), ("encoder", ENCODER))
         for o in objs]


def test_sequences_are_packed_first_fit_longest_first_and_read_back_in_order():
    seqs = [[1] * 5, [2] * 3, [3] * 2, [4] * 4, [5] * 1]
    p = rm.pack_rows(seqs, pad_id=0)
    # 15 tokens in rows of 5: [5], [4, 1], [3, 2]; padded, 5 rows of 5 (10 padding tokens).
    assert p["input_ids"].tolist() == [[1] * 5, [4] * 4 + [5], [2] * 3 + [3] * 2]
    assert p["segment_ids"].tolist() == [[0] * 5, [3] * 4 + [4], [1] * 3 + [2] * 2]
    assert p["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    flat = p["input_ids"].flatten()
    for i, s in enumerate(seqs):
        assert flat[p["unpack"][i, :len(s)]].tolist() == s
        assert (p["unpack"][i, len(s):] == p["unpack"][i, len(s) - 1]).all()  # past its end: its last token
    batch = rm.sequences(seqs, 0, packing=True)
    assert rm.token_counts(batch) == (15, 0) and rm.token_counts(rm.sequences(seqs, 0, packing=False)) == (15, 10)
    gaps = rm.pack_rows([[1] * 4, [2] * 3], pad_id=9)
    assert gaps["input_ids"].tolist() == [[1] * 4, [2] * 3 + [9]] and gaps["segment_ids"][1, 3] == -1


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, tiny_policy_dir):
    from transformers import BertConfig, BertForSequenceClassification

    enc_tok = models.load_tokenizer(str(models.default_rm_dir()))
    torch.manual_seed(0)
    encoder = tmp_path_factory.mktemp("packing") / "encoder"
    config = BertConfig(vocab_size=len(enc_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.rlhf_ray_pooling = "mean"
    BertForSequenceClassification(config).save_pretrained(encoder)
    enc_tok.save_pretrained(encoder)
    return {"decoder": str(tiny_policy_dir), "encoder": str(encoder)}


def _run(path, objective, attn, packing):
    tok = models.load_tokenizer(path)
    torch.manual_seed(0)  # the same new head on both sides
    model = models.load_reward_model(path, objective, tok, attn_implementation=attn)
    model.train()
    rows = [rm.encode_row(r, objective, tok, None, 256) for r in varied(objective)]
    batch = rm.collate(rows, objective, tok.pad_token_id, packing)
    out = rm.scores(model, batch, objective)
    loss_sum, n = loss_fn(objective, center_coef=0.01)(model, batch)
    loss_sum.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    held_out = evaluate(model, [{"batch": batch}], objective, "cpu")
    return batch, out.detach(), loss_sum.item(), int(n), grads, held_out


@pytest.mark.parametrize("kind,objective,attn", CASES)
def test_packed_batches_give_the_padded_scores_loss_gradients_and_figures(backbones, kind, objective, attn):
    pb, p_out, p_loss, p_n, p_grads, p_eval = _run(backbones[kind], objective, attn, packing=True)
    b, out, loss, n, grads, held_out = _run(backbones[kind], objective, attn, packing=False)
    assert pb["input_ids"].size(0) < b["input_ids"].size(0), "nothing was packed: the rows do not test packing"
    if objective in ("orm", "prm"):  # token heads: compare where the padded layout is real
        real = b["attention_mask"].bool()
        torch.testing.assert_close(p_out[real], out[real], atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(p_out, out, atol=1e-5, rtol=1e-4)
    assert p_n == n and p_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert p_grads.keys() == grads.keys()
    for k in grads:
        torch.testing.assert_close(p_grads[k], grads[k], atol=1e-5, rtol=1e-4, msg=k)
    assert p_eval.keys() == held_out.keys()
    for k in held_out:
        assert p_eval[k] == pytest.approx(held_out[k], rel=1e-4, abs=1e-5), k


def test_a_cls_pooled_checkpoint_refuses_packing_in_one_line(backbones, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(backbones["encoder"])
    config.rlhf_ray_pooling = "cls"
    cls_dir = tmp_path / "cls"
    models.load_tokenizer(backbones["encoder"]).save_pretrained(cls_dir)
    from transformers import BertForSequenceClassification
    BertForSequenceClassification(config).save_pretrained(cls_dir)
    tok = models.load_tokenizer(str(cls_dir))
    model = models.load_reward_model(str(cls_dir), "bt", tok)
    rows = [rm.encode_row(r, "bt", tok, None, 256) for r in varied("bt")]
    with pytest.raises(ValueError, match=r"\[CLS\]-pooled .* set reward.train.packing=false"):
        rm.scores(model, rm.collate(rows, "bt", tok.pad_token_id, packing=True), "bt")
