"""Model cards: every model folder the pipeline writes gets a README.md in the Hugging Face model-card
format (YAML front matter: base_model, datasets, library_name, license, tags), saying how it was made, so
that `huggingface-cli upload` publishes a self-describing model."""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

# The embedded defaults: their hub ids and licenses (both Apache-2.0).
_EMBEDDED = {"default": "HuggingFaceTB/SmolLM2-135M-Instruct", "default-rm": "sentence-transformers/all-MiniLM-L6-v2"}
_LICENSE = {hub_id: "apache-2.0" for hub_id in _EMBEDDED.values()}


def lineage(base: str) -> tuple[str | None, str | None]:
    """(hub id, license) of the model ``base`` descends from: an embedded default or a hub id as it is; a
    local folder through its own model card (an RS policy descends from the SFT policy's base)."""
    card = Path(base) / "README.md"
    if card.is_file():
        data = ModelCard.load(card).data
        return data.base_model, data.license
    hub_id = _EMBEDDED.get(base, None if Path(base).is_absolute() or "://" in base else base)
    return hub_id, _LICENSE.get(hub_id)


def write(model_dir: str | Path, stage: str, base: str, data_files: list[str], counts: dict, metrics: dict,
          config_hash: str, objective: str | None = None) -> Path:
    """``model_dir``/README.md for the model stage ``stage`` trained from ``base`` on ``data_files``."""
    hub_id, license_ = lineage(base)
    kind = f"reward model ({objective})" if objective else "chat model"
    tags = ["rlhf_ray", stage, *([objective] if objective else [])]
    card_data = ModelCardData(base_model=hub_id, datasets=[Path(f).name for f in data_files], license=license_,
                              library_name="transformers", tags=tags)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
             if isinstance(v, (int, float)) and (k.startswith("eval_") or k in ("loss", "step"))}
    body = "\n".join([
        f"# {Path(model_dir).parent.name}/{Path(model_dir).name}: a {kind} trained by rlhf_ray", "",
        f"- Stage: `{stage}`{f', objective `{objective}`' if objective else ''}, fine-tuned from `{base}`"
        f"{f' (descends from {hub_id})' if hub_id and hub_id != base else ''}.",
        f"- Data: {', '.join(f'`{Path(f).name}`' for f in data_files) or 'none'}.",
        f"- Rows: `{json.dumps(counts)}`.",
        f"- Final metrics: `{json.dumps(shown)}`.",
        f"- Config hash `{config_hash}` (the stage's `manifest.json` beside this folder holds the whole config).",
        ""])
    path = Path(model_dir) / "README.md"
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(path)
    return path
