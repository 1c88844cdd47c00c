"""``rlhf-ray`` command line: inspect masks and templates before spending compute on them."""
from __future__ import annotations

import argparse
import sys
from itertools import islice

from rlhf_ray import data, models
from rlhf_ray.core import chat


def _conversations(args):
    rows = data.read_records([args.file], "sft", args.adapter)
    return [r["messages"] for r in islice(rows, args.limit)]


def show_mask(args) -> int:
    tokenizer = models.chat_tokenizer(args.model, args.template, args.trust_remote_code)
    color = sys.stdout.isatty() and not args.no_color
    for n, messages in enumerate(_conversations(args)):
        rendered = chat.render(messages, tokenizer, args.mask, args.template)
        print(f"--- conversation {n}: {len(rendered.input_ids)} tokens, {rendered.num_trained} trained")
        print(chat.show_mask(rendered, tokenizer, color=color))
    legend = "trained tokens on green, masked ones dim" if color else "trained tokens in [brackets]"
    print(f"--- {legend}")
    return 0


def doctor(args) -> int:
    tokenizer = models.chat_tokenizer(args.model, args.template, args.trust_remote_code)
    conversations = _conversations(args)
    report = chat.doctor(conversations, tokenizer, args.template, args.mask, args.max_seq_len)
    print(report.summary())
    # The verdict the SFT job enforces before training (sft.train.template_check).
    refused = chat.preflight([(f"conversation {n}", m) for n, m in enumerate(conversations)], tokenizer,
                             args.template, args.mask)
    print(f"SFT job: {'refuses: ' + refused if refused else 'trains it'}")
    return 0 if report.ok and not refused else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("show-mask", show_mask, "print conversations with trained tokens highlighted"),
                            ("doctor", doctor, "check a chat template's masks on conversations")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("file", help="conversations (jsonl/parquet/datasets folder, SFT rows or an adapter's input)")
        p.add_argument("--model", default="default", help="tokenizer: default, a local folder or a hub id")
        p.add_argument("--template", default=None, help="chatml, zephyr, tulu or a .jinja file (default: the tokenizer's)")
        p.add_argument("--mask", default="all_assistant", choices=chat.MASK_STRATEGIES)
        p.add_argument("--adapter", default=None, choices=sorted(data.ADAPTERS))
        p.add_argument("--limit", type=int, default=3 if name == "show-mask" else 200)
        p.add_argument("--max-seq-len", type=int, default=None)
        p.add_argument("--no-color", action="store_true")
        p.add_argument("--trust-remote-code", action="store_true")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlhf-ray {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
