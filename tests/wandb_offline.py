"""Reading back an offline W&B run, for the tracking tests."""
import glob
import json
import time


def wandb_records(run_dir, timeout_s: float = 60.0) -> list:
    """The records of an offline W&B run, once it has its ``exit`` record: ``run.finish()`` returns before
    W&B's service process has written everything (a CI run under load read 3 of 4 steps; the file had all 4
    moments later)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            records = _read_records(glob.glob(f"{run_dir}/wandb/offline-run-*/run-*.wandb")[0])
        except Exception:  # noqa: BLE001 - a record still being written
            if time.time() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.time() > deadline:
            return records
        time.sleep(0.2)


def _read_records(path) -> list:
    """A .wandb file: LevelDB-style log blocks of protobuf records; wandb 0.31 ships no Python reader."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    pos, block, out, part = 7, 32768, [], b""  # after the ":W&B" header
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # the block's tail is padding
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
            part = b""
    return out


def wandb_logged(run_dir) -> tuple[list[dict], dict]:
    """(history rows, summary) of an offline W&B run."""
    items = lambda xs: {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in xs}  # noqa: E731
    records = wandb_records(run_dir)
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(items(r.summary.update))
    return history, summary
