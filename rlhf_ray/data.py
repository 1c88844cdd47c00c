"""Readers for jsonl, JSON arrays, CSV, parquet, ``datasets`` folders and hub datasets (``hub:NAME``),
format adapters (built in, or a user's ``module:callable``), and the quarantine of bad records.

The pure part (``parse_file``) yields one ``Record`` per output row, with the file and line it came
from and either the validated row or the reason it is bad. ``read_dataset`` runs it inside Ray Data
tasks, so rows stream from files on the workers instead of passing through the driver.
"""
from __future__ import annotations

import ast
import gzip
import json
import operator
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from rlhf_ray.core.schema import BadRecord, RowError, validate

OnBadRows = Literal["error", "quarantine"]


@dataclass(frozen=True)
class Record:
    file: str
    line: int               # 1-based line in jsonl files, 1-based row in parquet / datasets folders
    row: dict | None        # the validated row, None when bad
    field: str | None = None
    reason: str | None = None
    raw: object = None      # what the bad line held, for the quarantine file

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def error(self) -> str | None:
        return None if self.row is not None else f"{self.source}: {self.field}: {self.reason}"

    def raise_if_bad(self) -> dict:
        if self.row is None:
            raise BadRecord(self.file, self.line, self.field, self.reason)
        return self.row


# ---------------------------------------------------------------- raw records


class DataFileError(ValueError):
    """A data file that cannot be read at all (not gzip, truncated, not Parquet, empty): no row of it can be
    quarantined, so it stops the stage under either ``on_bad_rows``, naming the file."""


def iter_raw(path: str | Path) -> Iterator[tuple[int, object, str | None]]:
    """(line, record, None) for each record, or (line, text, reason) when it cannot be decoded; a file
    whose container cannot be read, or that holds no record, raises ``DataFileError`` naming it."""
    import zlib

    path, n = Path(path), 0
    try:
        for n, *rest in _iter_any(path):
            yield (n, *rest)
    except (OSError, EOFError, zlib.error) as e:  # truncated or non-gzip .gz, unreadable file or folder
        raise DataFileError(f"{path}: cannot be read: {type(e).__name__}: {e}") from None
    if n == 0:
        raise DataFileError(f"{path}: holds no records")


def _iter_any(path: Path):
    name = path.name
    if path.is_dir():
        yield from _iter_datasets_dir(path)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith((".json", ".json.gz")) and _starts_with(path, b"["):
        yield from _iter_json_array(path)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        yield from _iter_jsonl(path)
    elif name.endswith((".csv", ".csv.gz")):
        yield from _iter_csv(path)
    else:
        raise DataFileError(f"{path}: unknown data format (expected .jsonl, .json, .csv (each optionally .gz), "
                            f".parquet, a datasets folder or hub:NAME)")


def _open(path: Path, mode: str = "rb", **text):
    return gzip.open(path, mode, **text) if path.name.endswith(".gz") else open(path, mode, **text)


def _starts_with(path: Path, prefix: bytes) -> bool:
    with _open(path) as f:
        return f.read(4096).lstrip().startswith(prefix)


def _iter_json_array(path: Path):
    """A JSON array of records (``[{...}, {...}]``): record i is "line" i + 1."""
    with _open(path) as f:
        try:
            records = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataFileError(f"{path}: not a valid JSON array in UTF-8: {type(e).__name__}: {e}") from None
    yield from ((n, record, None) for n, record in enumerate(records, start=1))


def _iter_csv(path: Path):
    """CSV with a header row: each row a record of strings, numbered by its line in the file."""
    import csv

    with _open(path, "rt", encoding="utf-8", newline="") as f:  # newline="": csv handles quoted line breaks
        try:
            reader = csv.DictReader(f)
            for row in reader:
                if None in row or None in row.values():
                    yield reader.line_num, row, "a row with more or fewer cells than the header"
                    continue
                yield reader.line_num, row, None
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataFileError(f"{path}: not a readable CSV file in UTF-8: {e}") from None


def _iter_jsonl(path: Path):
    with _open(path) as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, raw.decode("utf-8", "replace").rstrip("\r\n"), f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})"
                continue
            try:
                yield n, json.loads(text), None
            except json.JSONDecodeError as e:
                yield n, text.rstrip("\r\n"), f"invalid JSON: {e.msg} at column {e.colno}"
            except RecursionError:
                yield n, text[:200], "JSON nested too deep"


def _iter_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield n, row, None
    except pa.ArrowException as e:
        raise DataFileError(f"{path}: not a readable Parquet file: {e}") from None


def _iter_datasets_dir(path: Path):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataFileError(f"{path}: not a datasets folder (save_to_disk) ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataFileError(f"{path}: holds splits {list(ds)}; name one split's folder")
    for n, row in enumerate(ds, start=1):
        yield n, row, None


# ---------------------------------------------------------------- adapters


Adapter = Callable[[dict], list[dict]]


def _need(record: dict, key: str):
    if not isinstance(record, dict):
        raise RowError("<record>", f"must be a JSON object, got {type(record).__name__}")
    if key not in record:
        raise RowError(key, "missing")
    return record[key]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_transcript(text: str, field: str) -> list[dict]:
    """``\\n\\nHuman: … \\n\\nAssistant: …`` → messages."""
    if not isinstance(text, str):
        raise RowError(field, f"must be a transcript string, got {type(text).__name__}")
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError(field, "not a '\\n\\nHuman: … \\n\\nAssistant: …' transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def hh_to_pairwise(record: dict) -> list[dict]:
    """Anthropic HH: the shared turns are the prompt, the differing last assistant turns the pair."""
    chosen = hh_transcript(_need(record, "chosen"), "chosen")
    rejected = hh_transcript(_need(record, "rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("rejected", "chosen and rejected transcripts differ before their last turn")
    return [{"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}]


def gsm8k_answer(solution: str) -> str:
    """The final number after ``####`` (GSM8K) or ``A:`` (model solutions), commas removed."""
    marker = "####" if "####" in solution else "A:"
    return solution.rsplit(marker, 1)[-1].strip().replace(",", "").rstrip(".")


def gsm8k_to_prompt(record: dict) -> list[dict]:
    question, answer = _need(record, "question"), _need(record, "answer")
    return [{"prompt": [{"role": "user", "content": question}], "answer": gsm8k_answer(answer)}]


GSM8K_SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def _solutions(record: dict) -> Iterator[tuple[list[dict], str, dict]]:
    """(prompt, solver, {solution, is_correct}) for each labelled model solution of a GSM8K question."""
    prompt = [{"role": "user", "content": _need(record, "question")}]
    for solver in GSM8K_SOLVERS:
        sol = _need(record, solver)
        if not isinstance(sol, dict) or "solution" not in sol or "is_correct" not in sol:
            raise RowError(solver, "must hold solution and is_correct")
        yield prompt, solver, sol


def gsm8k_solutions_to_orm(record: dict) -> list[dict]:
    """One ORM row per labelled model solution."""
    return [{"prompt": prompt, "completion": sol["solution"], "label": sol["is_correct"], "solver": solver}
            for prompt, solver, sol in _solutions(record)]


_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _arith(node):
    """Evaluate +, -, *, / over numbers only (never ``eval``)."""
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arith(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.left), _arith(node.right))
    raise ValueError("not arithmetic")


def calculation_ok(expr: str, result: str) -> bool | None:
    """Whether ``<<expr=result>>`` is right; None when it cannot be checked (not plain arithmetic)."""
    try:
        want = float(result.replace(",", ""))
        got = _arith(ast.parse(expr.replace(",", ""), mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
        return None
    return abs(got - want) <= 1e-6 * max(1.0, abs(want))


def prm_step_labels(steps: list[str], is_correct: bool) -> list[int]:
    """The documented automatic rule (no human step labels exist offline):
    a step with a wrong ``<<a op b = c>>`` calculation is -1; every step of a correct solution is +1;
    in a wrong solution, the final-answer step is -1 and other steps with no wrong calculation are 0."""
    labels = []
    for i, step in enumerate(steps):
        wrong = any(calculation_ok(e, r) is False for e, r in _CALC.findall(step))
        if wrong:
            labels.append(-1)
        elif is_correct:
            labels.append(1)
        else:
            labels.append(-1 if i == len(steps) - 1 else 0)
    return labels


def gsm8k_solutions_to_prm(record: dict) -> list[dict]:
    """One PRM row per model solution: its lines are the steps, labelled by ``prm_step_labels``."""
    rows = []
    for prompt, solver, sol in _solutions(record):
        steps = [line.strip() for line in sol["solution"].split("\n") if line.strip()]
        rows.append({"prompt": prompt, "completions": steps, "labels": prm_step_labels(steps, bool(sol["is_correct"])),
                     "solver": solver})
    return rows


def alpaca_to_sft(record: dict) -> list[dict]:
    """Alpaca (instruction, input, output) → one conversation (the input appended to the instruction)."""
    instruction, output = _need(record, "instruction"), _need(record, "output")
    user = instruction if not record.get("input") else f"{instruction}\n\n{record['input']}"
    return [{"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}]


def alpaca_seed_to_sft(record: dict) -> list[dict]:
    """Self-Instruct seed task → one conversation per instance (input appended to the instruction)."""
    instruction = _need(record, "instruction")
    rows = []
    for i, inst in enumerate(_need(record, "instances")):
        if not isinstance(inst, dict):
            raise RowError(f"instances[{i}]", "must be an object with input and output")
        user = instruction if not inst.get("input") else f"{instruction}\n\n{inst['input']}"
        rows.append({"messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": inst.get("output", "")}]})
    return rows


ADAPTERS: dict[str, Adapter] = {
    "hh": hh_to_pairwise,
    "gsm8k": gsm8k_to_prompt,
    "gsm8k_solutions": gsm8k_solutions_to_orm,
    "gsm8k_prm": gsm8k_solutions_to_prm,
    "alpaca": alpaca_to_sft,
    "alpaca_seed": alpaca_seed_to_sft,
}


def get_adapter(name: str | dict | None) -> Adapter | None:
    """A built-in adapter by name, a user's ``module:callable`` (record → list of rows), or a column map
    (``{their column: ours}``: each record renamed, its other columns kept)."""
    if name is None:
        return None
    if isinstance(name, dict):
        mapping = dict(name)

        def renamed(record: dict) -> list[dict]:
            if not isinstance(record, dict):
                raise RowError("<record>", f"must be a JSON object, got {type(record).__name__}")
            return [{mapping.get(k, k): v for k, v in record.items()}]
        return renamed
    if ":" in name:
        from rlhf_ray.core import rewards

        return rewards.load_callable(name, "adapter")
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}: one of {sorted(ADAPTERS)}, or module:callable")
    return ADAPTERS[name]


# ---------------------------------------------------------------- records


def parse_file(path: str | Path, kind: str, adapter: str | dict | None = None) -> Iterator[Record]:
    """Every row a file yields, validated against ``kind`` (after the adapter, if any). A storage URI
    is read through this node's cache and named by its URI; a hub dataset is named ``hub:NAME:SPLIT``."""
    from rlhf_ray import storage

    adapt = get_adapter(adapter)
    file = str(path)
    local = hub_folder(file) if is_hub(file) else storage.local(file)
    for line, raw, problem in iter_raw(local):
        if problem is not None:
            yield Record(file, line, None, "<line>", problem, raw)
            continue
        try:
            rows = adapt(raw) if adapt else [raw]
            for row in rows:
                yield Record(file, line, validate(kind, row))
        except RowError as e:
            yield Record(file, line, None, e.field, e.reason, raw)


def read_records(paths: Iterable[str | Path], kind: str, adapter: str | dict | None = None,
                 on_bad_rows: OnBadRows = "error", quarantine: list[Record] | None = None) -> Iterator[dict]:
    """Good rows in order. A bad one raises ``BadRecord``, or with ``quarantine`` goes to that list."""
    for path in paths:
        for rec in parse_file(path, kind, adapter):
            if rec.row is not None:
                yield rec.row
            elif on_bad_rows == "quarantine" and quarantine is not None:
                quarantine.append(rec)
            else:
                rec.raise_if_bad()


def write_quarantine(records: Iterable[Record], path: str | Path, append: bool = False) -> int:
    """Bad rows with file, line, field and reason, one JSON object a line; returns how many."""
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"file": r.file, "line": r.line, "field": r.field, "reason": r.reason,
                                "record": r.raw}, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------- hub datasets


def is_hub(spec: str) -> bool:
    return str(spec).startswith("hub:")


def hub_spec(spec: str) -> tuple[str, str, dict]:
    """``hub:NAME[:SPLIT][?config=C&revision=R&data_dir=D]`` → (name, split, load_dataset options). NAME is a
    hub id (``trl-lib/Capybara``) or a local dataset repository folder; SPLIT defaults to train and takes
    ``datasets``' slices (``train[:2000]``)."""
    from urllib.parse import parse_qsl

    body, _, query = spec.removeprefix("hub:").partition("?")
    name, _, split = body.partition(":")
    options = dict(parse_qsl(query))
    unknown = sorted(set(options) - {"config", "revision", "data_dir"})
    if not name or unknown:
        raise ValueError(f"{spec}: expected hub:NAME[:SPLIT][?config=C&revision=R&data_dir=D]"
                         + (f" (unknown option {unknown[0]})" if unknown else ""))
    return name, split or "train", options


def hub_folder(spec: str) -> Path:
    """A hub dataset split materialised once (``datasets``' own download cache, then ``save_to_disk``
    under this node's cache), so that it is read, and its bad rows named, like any file."""
    import hashlib

    from rlhf_ray import storage

    name, split, options = hub_spec(spec)
    key = hashlib.sha256(json.dumps([name, split, sorted(options.items())]).encode()).hexdigest()[:16]
    readable = re.sub(r"[^\w.-]+", "_", name)[-60:]
    folder = storage.cache_dir() / "datasets" / f"{readable}-{split}-{key}"
    if (folder / "dataset_info.json").exists():
        return folder
    import datasets

    try:
        ds = datasets.load_dataset(name, options.get("config"), split=split, revision=options.get("revision"),
                                   data_dir=options.get("data_dir"))
    except Exception as e:  # noqa: BLE001 - the hub's and the builder's many errors: one line naming the spec
        offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: load it once online, or give a file)" \
            if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1" else ""
        raise DataFileError(f"{spec}: cannot load {name} split {split}{offline}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    ds.save_to_disk(str(tmp))
    tmp.replace(folder)  # whole or not at all, whichever process of the node gets here first
    return folder


def expand_paths(spec: str | Iterable[str]) -> list[str]:
    """A path, a glob, or a list of them → sorted existing files; a missing input is an error. Storage
    URIs are taken as they are (no globs); hub datasets are loaded once here, on the driver."""
    from rlhf_ray import storage

    specs = [str(spec)] if isinstance(spec, (str, Path)) else [str(s) for s in spec]
    out = []
    for s in specs:
        if is_hub(s):
            hub_folder(s)
            out.append(s)
            continue
        if storage.is_remote(s):
            if not storage.exists(s):
                raise FileNotFoundError(f"input not found: {s}")
            out.append(s)
            continue
        p = Path(s)
        matches = sorted(str(m) for m in p.parent.glob(p.name)) if any(c in s for c in "*?[") else [s]
        if not matches or not all(Path(m).exists() for m in matches):
            raise FileNotFoundError(f"input not found: {s}")
        out += matches
    twice = sorted(f for f, n in Counter(out).items() if n > 1)
    if twice:  # its rows would be read twice
        raise ValueError(f"input listed more than once: {', '.join(twice)}")
    return out


def source_names(files: Iterable[str]) -> dict[str, str]:
    """Each file's path below the folder all of them share: names that tell same-named files in
    different folders apart (``train/prompts.jsonl``, ``extra/prompts.jsonl``); files of one folder
    keep their bare names."""
    parts = {str(f): str(f).split("/") for f in files}
    common = len(os.path.commonprefix([p[:-1] for p in parts.values()]))
    return {f: "/".join(p[common:]) for f, p in parts.items()}


# ---------------------------------------------------------------- Ray Data

_WHOLE_FILE = "<file>"


def _records_for_file(item: dict, kind: str, adapter: str | dict | None) -> Iterator[dict]:
    try:
        for rec in parse_file(item["path"], kind, adapter):
            # Later stages (tokenization) still name the file and line of a row they reject.
            row = None if rec.row is None else json.dumps({**rec.row, "_file": rec.file, "_line": rec.line})
            yield {"row": row, "file": rec.file, "line": rec.line, "field": rec.field, "reason": rec.reason,
                   "raw": None if rec.row is not None else json.dumps(rec.raw, default=str)}
    except DataFileError as e:
        # Line 0: the whole file, which the driver reports in one line (not as a Ray task's traceback).
        yield {"row": None, "file": item["path"], "line": 0, "field": _WHOLE_FILE, "reason": str(e), "raw": None}


def read_dataset(paths: str | Iterable[str], kind: str, adapter: str | dict | None = None,
                 on_bad_rows: OnBadRows = "error", quarantine_path: str | Path | None = None):
    """Validated rows as a Ray Dataset, and the number of quarantined ones.

    Files are parsed in Ray tasks. With ``on_bad_rows="error"`` the first bad record (in file order)
    raises ``BadRecord``; with ``"quarantine"`` bad rows go to ``quarantine_path`` (jsonl, with reason).
    """
    import ray.data

    from rlhf_ray import storage

    files = [storage.publish(f) for f in expand_paths(paths)]  # parsed on any node
    tagged = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).flat_map(
        _records_for_file, fn_kwargs={"kind": kind, "adapter": adapter})
    good, n_bad = split_bad_rows(tagged, on_bad_rows, quarantine_path)
    if n_bad and good.count() == 0:  # nothing left to train or sample on: say so, not a library's error later
        raise DataFileError(f"{', '.join(files)}: all {n_bad} rows are bad (quarantined in {quarantine_path}); "
                            f"the first lines there say why")
    # One schema over all files: a column that only some rows carry (a gold answer in a later file) is
    # kept, and null where a row lacks it; a column whose type differs between rows stops the stage.
    found = good.map_batches(_column_types, batch_format="numpy").take_all()
    return good.map(_with_columns, fn_kwargs={"columns": one_schema(found)}), n_bad


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", list: "list", dict: "object"}[type(value)]


def _column_types(batch: dict) -> dict:
    """Each (column, JSON type) the batch's rows hold, with the first row (file:line) that holds it."""
    first: dict[tuple[str, str], str] = {}
    for r in batch["row"]:
        row = json.loads(r)
        for c, v in row.items():
            kind = "null" if v is None or c in ("_file", "_line") else _json_type(v)
            first.setdefault((c, kind), f"{row['_file']}:{row['_line']}")
    return {"column": [c for c, _ in first], "type": [t for _, t in first], "at": list(first.values())}


def one_schema(found: list[dict]) -> list[str]:
    """The columns of all rows, from ``_column_types`` records; a column holding two types (a string
    answer in one file, a number in another) is an error naming a row of each."""
    seen: dict[str, dict[str, str]] = {}
    for x in found:
        seen.setdefault(x["column"], {}).setdefault(x["type"], x["at"])
    for column, kinds in sorted(seen.items()):
        kinds.pop("null", None)
        if len(kinds) > 1:
            (t1, at1), (t2, at2) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
            raise DataFileError(f"{at1}: {column}: a {t1} here but a {t2} at {at2}; a column holds one type "
                                "in every file")
    return sorted(seen)


def _with_columns(r: dict, columns: list[str]) -> dict:
    row = json.loads(r["row"])
    return {c: row.get(c) for c in columns}


def hold_out(rows, n: int, key: str):
    """(the rows but the last ``n``, the last ``n``): the held-out split of a dataset without eval files;
    ``key`` names the setting in the error when there are not more than ``n`` rows."""
    total = rows.count()
    if n >= total:
        raise ValueError(f"{key}={n}: the training data has only {total} rows; hold out fewer")
    return tuple(rows.split_at_indices([total - n]))


def split_bad_rows(tagged, on_bad_rows: OnBadRows, quarantine_path: str | Path | None):
    """Rows carrying ``file, line, field, reason`` (reason None = good; ``raw``, where present, the bad
    record as read) → (good rows, bad count). The one bad-row policy of every stage.

    ``error``: the first bad row (in file order) raises ``BadRecord``; ``quarantine``: bad rows are
    appended to ``quarantine_path``. The bookkeeping columns are dropped from the good rows.
    """
    tagged = tagged.materialize()
    bad = tagged.filter(lambda r: r["reason"] is not None)
    n_bad = bad.count()
    unreadable = bad.filter(lambda r: r["field"] == _WHOLE_FILE).take(1) if n_bad else []
    if unreadable:
        raise DataFileError(unreadable[0]["reason"])
    if n_bad and on_bad_rows == "error":
        first = bad.sort(["file", "line"]).take(1)[0]
        raise BadRecord(first["file"], first["line"], first["field"], first["reason"])
    if n_bad and quarantine_path is not None:
        write_quarantine((Record(r["file"], r["line"], None, r["field"], r["reason"],
                                 json.loads(r["raw"]) if r.get("raw") else None) for r in bad.iter_rows()),
                         quarantine_path, append=True)
    keep = [c for c in tagged.columns() if c not in ("file", "line", "field", "reason", "raw")]
    return tagged.filter(lambda r: r["reason"] is None).select_columns(keep).materialize(), n_bad


def first_rows(files: list[str], kind: str, adapter: str | dict | None, sample: int = 32) -> list:
    """The first ``sample`` good records of ``files``, as read for training."""
    from itertools import islice

    return list(islice((r for f in files for r in parse_file(f, kind, adapter) if r.row is not None), sample))
