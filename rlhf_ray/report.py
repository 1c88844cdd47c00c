"""The run report: RUN_DIR/report.html, one self-contained file (its PNG plots inside it, and beside it),
with the results table.

Reads only the run folder's artifacts (metrics.jsonl, manifests, scored candidates, eval/results.json);
every section whose artifact is missing is left out with a line that says so.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_ray.manifest import MANIFEST  # noqa: E402
from rlhf_ray.run_layout import METRICS, RunDir  # noqa: E402


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def loss_curve(metrics: list[dict], title: str, path: Path, extra: str | None = None) -> str | None:
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(*zip(*train), label="train loss")
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss")
    if extra:
        start = [(0, m[f"{extra}_initial"]) for m in metrics[:1] if f"{extra}_initial" in m]
        acc = start + [(m["step"], m[extra]) for m in metrics if extra in m]
        if acc:
            ax2 = ax.twinx()
            ax2.plot(*zip(*acc), "s--", color="tab:green", label=f"held-out {extra.removeprefix('eval_')}")
            ax2.set_ylabel(extra.removeprefix("eval_"))
            ax2.legend(loc="upper right")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend(loc="upper left" if extra else "best")
    return _save(fig, path)


def reward_histogram(all_rewards, kept_rewards, path: Path) -> str:
    import numpy as np

    bins = np.histogram_bin_edges(list(all_rewards) + list(kept_rewards), bins=30)  # one grid for both
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(all_rewards, bins=bins, alpha=0.6, label=f"all completions ({len(all_rewards)})")
    ax.hist(kept_rewards, bins=bins, alpha=0.8, label=f"kept ({len(kept_rewards)})")
    ax.set(xlabel="reward (proxy)", ylabel="count", title="Rejection sampling: rewards of all vs kept")
    ax.legend()
    return _save(fig, path)


def bon_curve(curve: dict, path: Path) -> str:
    """Proxy and gold of the RM's pick against N (Gao et al.'s over-optimisation picture)."""
    ns = [int(n) for n in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(ns, [curve[str(n)]["proxy"] for n in ns], "o-", label="proxy reward of the pick")
    ax.set(xscale="log", xlabel="N (samples per prompt)", ylabel="proxy reward", title="Best-of-N")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    if curve[str(ns[0])].get("gold") is not None:
        ax2 = ax.twinx()
        ax2.plot(ns, [curve[str(n)]["gold"] for n in ns], "s-", color="tab:orange", label="gold of the pick")
        ax2.plot(ns, [curve[str(n)]["gold_random"] for n in ns], "--", color="tab:gray", label="gold, random pick")
        ax2.plot(ns, [curve[str(n)]["gold_oracle"] for n in ns], ":", color="tab:gray", label="gold oracle")
        ax2.set(ylabel="gold reward", ylim=(0, 1.05))
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    return _save(fig, path)


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ci(d: dict | None) -> str:
    if not d or d.get("estimate") is None:
        return "—"
    return f"{d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


POLICY_NAMES = {"sft": "SFT policy", "rs": "after rejection sampling (RM picks)",
                "random": "matched random baseline", "rs_rule": "after rejection sampling (rule reward)"}


def results_table(results: dict) -> list[tuple[str, ...]]:
    """Rows (policy, sampled gold, greedy gold, proxy) for every evaluated policy."""
    return [(POLICY_NAMES.get(k, k), _fmt(v.get("gold")), _fmt(v.get("greedy_gold")), _fmt(v.get("proxy")))
            for k, v in results.get("policies", {}).items()]


def bon_table(results: dict) -> list[tuple[str, ...]]:
    """Rows (N, proxy, gold of the pick, random, oracle, gain over N=1 [CI], gap closed [CI])."""
    return [(n, _fmt(v["proxy"]), _fmt(v.get("gold")), _fmt(v.get("gold_random")), _fmt(v.get("gold_oracle")),
             _ci(v.get("gain_over_1")), _ci(v.get("gap_closed")))
            for n, v in results.get("best_of_n", {}).items()]


def comparison_table(results: dict) -> list[tuple[str, ...]]:
    """Rows (comparison, sampled-gold difference [CI], greedy-gold difference [CI])."""
    return [(k, _ci(v.get("gold")), _ci(v.get("greedy_gold"))) for k, v in results.get("comparisons", {}).items()]


def rm_data_line(counts: dict) -> str:
    """The labelled-sample reward model's data, in words."""
    return (f"Trained on the SFT policy's own answers, labelled by the checker: {counts['samples']} answers to "
            f"{counts['prompts']} problems, {counts['correct_fraction']:.0%} of them right; {counts['train_rows']} "
            f"right-vs-wrong pairs from the {counts['prompts_with_both']} problems with both, "
            f"{counts['eval_rows']} more held out.")


def held_out_line(held_out: dict) -> str:
    """The reward model's held-out figures (their names depend on the objective: accuracy, AUC, ...)."""
    return "Held-out: " + ", ".join(f"{k.removeprefix('eval_').replace('_', ' ')} {_fmt(v)}" for k, v in held_out.items()
                                    if isinstance(v, (int, float))) + "."


SELECTION_NAMES = {"rs": "reward model", "rs_rule": "rule reward"}


def selection_table(selections: dict[str, dict]) -> list[tuple[str, ...]]:
    """Rows (picked by, candidates, kept, gold of the kept / of random picks / of all, reward of the kept / of
    random picks / of all) from each chain's select manifest counts."""
    return [(SELECTION_NAMES.get(chain, chain), str(c["candidates"]), str(c["kept"]),
             *(_fmt(c.get(f"gold_mean_{w}")) for w in ("kept", "random", "all")),
             *(_fmt(c.get(f"reward_mean_{w}")) for w in ("kept", "random", "all")))
            for chain, c in selections.items()]


def _row(tag: str, cells) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return "<table>" + _row("th", header) + "".join(_row("td", r) for r in rows) + "</table>"


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def build(run_dir: str | Path, rounds: int = 1) -> Path:
    import pandas as pd

    layout = RunDir(Path(run_dir))
    root, last = layout.root, layout.rs_round(rounds)
    sections: list[str] = []

    def figure(title: str, png: str | None, missing: str) -> None:
        # The PNG inside the page (one self-contained file to mail or log); the file stays beside it too.
        data = base64.b64encode((root / png).read_bytes()).decode() if png else ""
        body = f'<img src="data:image/png;base64,{data}" alt="{html.escape(title)}" title="{png}">' if png \
            else f"<p><em>{html.escape(missing)}</em></p>"
        sections.append(f"<h2>{html.escape(title)}</h2>{body}")

    figure("SFT", loss_curve(_jsonl(layout.sft / METRICS), "SFT loss", root / "sft_loss.png"),
           "no SFT metrics in this run")
    rm, rm_data = _manifest(layout.rm / MANIFEST), _manifest(layout.rm_data / MANIFEST)
    figure("Reward model", loss_curve(_jsonl(layout.rm / METRICS), "Reward model loss",
                                      root / "rm_loss.png", extra="eval_accuracy"), "no reward-model metrics")
    if rm_data.get("counts"):
        sections.append(f"<p>{html.escape(rm_data_line(rm_data['counts']))}</p>")
    if rm.get("held_out"):
        sections.append(f"<p>{html.escape(held_out_line(rm['held_out']))}</p>")
    scored, kept = last.scored, last.kept
    png = None
    if scored.exists() and kept.exists():
        png = reward_histogram(pd.read_parquet(scored).reward.tolist(), [r["reward"] for r in _jsonl(kept)],
                               root / "rs_rewards.png")
    figure(f"Rejection sampling, round {rounds}", png, "no rejection-sampling round in this run")
    selections = {chain: counts for chain, chosen in (("rs", last), ("rs_rule", layout.rule_round(rounds)))
                  if (counts := _manifest(chosen.select / MANIFEST).get("counts"))}
    if selections:
        sections.append(_table(("picked by", "candidates", "kept", "gold: kept", "random picks", "all",
                                "reward: kept", "random picks", "all"), selection_table(selections)))
    results = json.loads(layout.results.read_text()) if layout.results.exists() else {}
    if results.get("verdict"):
        sections.insert(0, f"<h2>Verdict</h2><p><strong>{html.escape(results['verdict'])}</strong></p>")
    figure("Best-of-N (held-out prompts)", bon_curve(results["best_of_n"], root / "bon.png") if results.get("best_of_n") else None,
           "no evaluation in this run")
    if results.get("best_of_n"):
        sections.append(_table(("N", "proxy", "gold", "random", "oracle", "gold − BoN@1 [95% CI]",
                                "gap closed [95% CI]"), bon_table(results)))
    sections.append("<h2>Policies (held-out prompts)</h2>" + _table(
        ("policy", "gold (sampled)", "gold (greedy)", "proxy"), results_table(results)))
    if results.get("comparisons"):
        sections.append("<h2>Paired differences (bootstrap 95% CI over prompts)</h2>" + _table(
            ("comparison", "gold (sampled)", "gold (greedy)"), comparison_table(results)))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>rlhf_ray run report</title><style>"
            "body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:4px 12px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}</style></head><body>"
            f"<h1>Run report: {html.escape(str(root))}</h1>{''.join(sections)}</body></html>")
    out = layout.report
    out.write_text(page)
    return out
