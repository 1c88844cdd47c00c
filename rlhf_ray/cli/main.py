"""The ``rlhf-ray`` command: every stage (``rlhf-ray sft CONFIG [key=value ...]``), the example configs
(``rlhf-ray config list | show | cp | reference``) and the mask tools (``doctor``, ``show-mask``)."""
from __future__ import annotations

import argparse
import shutil
import sys
from itertools import islice
from pathlib import Path

import yaml

from rlhf_ray import config_load, data, models
from rlhf_ray.cli import job, reference
from rlhf_ray.cli.stages import STAGES
from rlhf_ray.config import PipelineConfig
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


def stage_help(command: str) -> str:
    stage = STAGES[command]
    return (f"usage: rlhf-ray {command} CONFIG [key=value ...] [--debug]\n"
            f"       python jobs/{stage.job}.py CONFIG [key=value ...]   (also under ray job submit)\n\n"
            f"CONFIG: a YAML file, or an example config by name ({', '.join(config_load.packaged())}).\n"
            f"--debug: the traceback of a user error too.\n\n{stage.doc}\n\n"
            f"Config keys it reads (override any as key=value; every key: rlhf-ray config reference):\n"
            f"{reference.text(list(stage.sections))}")


def config_command(args) -> int:
    if args.action == "list":
        for name, path in config_load.packaged().items():
            print(f"{name:12s} {path}")
    elif args.action == "show":
        cfg = config_load.load(PipelineConfig, args.config, args.overrides)
        print(yaml.safe_dump(config_load.plain(cfg), sort_keys=False), end="")
    elif args.action == "cp":
        target = Path(args.dest)
        if target.exists():
            raise ValueError(f"{target} exists; name a new file")
        shutil.copyfile(config_load.config_path(args.config), target)
        print(f"wrote {target}: edit it, then rlhf-ray pipeline {target}")
    else:
        print(reference.markdown(), end="")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STAGES:  # CONFIG [key=value ...] as the jobs take them, --help included
        stage = STAGES[argv[0]]
        return job.main(stage.job, stage_help(argv[0]), stage.run, argv[1:])
    parser = argparse.ArgumentParser(prog="rlhf-ray", epilog="rlhf-ray STAGE --help: what it does, writes and the config keys it reads.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, stage in STAGES.items():  # listed in --help; parsed above
        sub.add_parser(name, help=" ".join(stage.doc.split("\n\n")[0].split()), add_help=False)
    c = sub.add_parser("config", help="list, show (resolved), copy or document the configs")
    c.add_argument("action", choices=["list", "show", "cp", "reference"])
    c.add_argument("config", nargs="?", default="tiny", help="a YAML file or an example config's name (default tiny)")
    c.add_argument("dest", nargs="?", help="cp: the new file")
    c.add_argument("overrides", nargs="*", help="show: key=value overrides")
    c.set_defaults(fn=config_command)
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
    if args.command == "config" and args.action == "show" and args.dest:
        args.overrides = [args.dest, *args.overrides]  # show CONFIG key=value ...: no destination
    if args.command == "config" and args.action == "cp" and not args.dest:
        parser.error("config cp NAME DEST: name the new file")
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlhf-ray {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
