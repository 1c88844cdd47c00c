"""Run folders in object storage (``s3://``, ``gs://``, any pyarrow filesystem URI) or on a local disk.

A job with a remote run folder works in a node-local *mirror* of it: ``mirror`` pulls the folder,
stages write there as usual, and each finished stage is pushed back (``manifest.write`` calls ``push``),
so an interrupted job resumes from storage on any node. Whatever runs on other nodes (Ray Data tasks,
vLLM and reward-model actors, Ray Train workers) is handed storage URIs (``shared``) and reads them
through a node-local cache (``local``). Local run folders pass through every function unchanged.

A ledger in the mirror records each file's local stat and remote (size, mtime) at its last transfer:
a push uploads what changed here, a pull downloads what changed in storage.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MARK = ".rlhf_ray_remote"  # in a mirror's root: the URI it mirrors
LEDGER = ".rlhf_ray_ledger.json"
# Ray Train keeps its checkpoints in storage and resumes from there: mirrors never download them.
NOT_PULLED = ("ray_train",)


def is_remote(path) -> bool:
    s = str(path)
    return "://" in s and not s.startswith("file://")


def cache_dir() -> Path:
    """This node's cache: converted embedded models and storage downloads (``RLHF_RAY_CACHE``)."""
    return Path(os.environ.get("RLHF_RAY_CACHE", Path.home() / ".cache" / "rlhf_ray"))


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mirror(uri: str) -> Path:
    """The node-local mirror of the run folder ``uri``, refreshed from storage."""
    import pyarrow.fs as pafs

    fs, base = _fs(uri)
    bucket = base.split("/")[0]
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as e:  # no credentials, no route: the user's to fix
        raise ValueError(f"run_dir {uri}: storage not reachable: {e}") from None
    if not found:
        raise ValueError(f"run_dir {uri}: storage not reachable: bucket {bucket!r} not found")
    root = (cache_dir() / "runs" / _key(uri.rstrip("/"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARK).write_text(uri.rstrip("/"))
    pull(root)
    return root


def _mirror_root(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / MARK).is_file():
            return parent
    return None


def uri(path) -> str | None:
    """The storage URI of a path inside a mirror (or of a URI itself); None for plain local paths."""
    if is_remote(path):
        return str(path)
    p = Path(path)
    # Mirrors are absolute paths; a relative name (a hub id, ``default``) is never in one. Not asking
    # for the cwd also matters: Ray may delete a job's working_dir while the job runs.
    root = _mirror_root(p) if p.is_absolute() else None
    if root is None:
        return None
    rel = p.relative_to(root).as_posix()
    base = (root / MARK).read_text()
    return base if rel == "." else f"{base}/{rel}"


def publish(path) -> str:
    """A name every node can read: a mirror path is pushed and named by its URI; others are unchanged."""
    u = uri(path)
    if u is None or is_remote(path):
        return str(path)
    push(path)
    return u


# ---------------------------------------------------------------- transfers


def _remote_files(fs, base: str) -> dict[str, tuple[int, int]]:
    import pyarrow.fs as pafs

    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        return {"": (info.size, info.mtime_ns or 0)}
    if info.type == pafs.FileType.NotFound:
        return {}
    sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return {i.path[len(base):].lstrip("/"): (i.size, i.mtime_ns or 0)
            for i in fs.get_file_info(sel) if i.type == pafs.FileType.File}


def _local_files(path: Path) -> dict[str, tuple[int, int]]:
    if path.is_file():
        st = path.stat()
        return {"": (st.st_size, st.st_mtime_ns)}
    return {f.relative_to(path).as_posix(): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in path.rglob("*") if f.is_file() and f.name not in (MARK, LEDGER)}


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if rel else base


def _copy(src_fs, src: str, dst_fs, dst: str) -> None:
    with src_fs.open_input_stream(src) as i, dst_fs.open_output_stream(dst) as o:
        shutil.copyfileobj(i, o, length=8 << 20)


class _Ledger:
    def __init__(self, root: Path):
        self.path = root / LEDGER
        self.entries = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.path)


def _plan(path: Path, direction: str):
    """What a push or pull of ``path`` (a mirror file or folder) would copy: (ledger, [(rel, key, src, dst)])
    with src/dst as (filesystem, path); None outside mirrors."""
    import pyarrow.fs as pafs

    root = _mirror_root(path) if path.is_absolute() else None
    if root is None:
        return None
    fs, base = _fs(uri(path))
    here = pafs.LocalFileSystem()
    ledger = _Ledger(root)
    prefix = path.relative_to(root).as_posix()
    key = lambda rel: rel if prefix == "." else _join(prefix, rel)  # noqa: E731  a file's path in the run
    loc = lambda rel: str(path / rel) if rel else str(path)  # noqa: E731
    if direction == "push":
        todo = [rel for rel, st in _local_files(path).items()
                if ledger.entries.get(key(rel), {}).get("local") != list(st)]
        return ledger, [(rel, key(rel), (here, loc(rel)), (fs, _join(base, rel))) for rel in todo]
    todo = [rel for rel, st in _remote_files(fs, base).items()
            if not set(key(rel).split("/")) & set(NOT_PULLED)
            and (ledger.entries.get(key(rel), {}).get("remote") != list(st) or not Path(loc(rel)).exists())]
    return ledger, [(rel, key(rel), (fs, _join(base, rel)), (here, loc(rel))) for rel in todo]


def _transfer(path: Path, direction: str) -> int:
    plan = _plan(path, direction)
    if plan is None or not plan[1]:
        return 0
    ledger, todo = plan
    if direction == "pull":
        for _, _, _, (_, dst) in todo:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: _copy(*t[2], *t[3]), todo))
    for _, k, src, dst in todo:
        (local_fs, lp), (remote_fs, rp) = (src, dst) if direction == "push" else (dst, src)
        st, info = Path(lp).stat(), remote_fs.get_file_info(rp)
        ledger.entries[k] = {"local": [st.st_size, st.st_mtime_ns], "remote": [info.size, info.mtime_ns or 0]}
    ledger.save()
    return len(todo)


def push(path) -> int:
    """Upload what changed in a mirror file or folder since its last transfer (no-op outside mirrors)."""
    return _transfer(Path(path), "push")


def pull(path) -> int:
    """Download what changed in storage under a mirror file or folder (no-op outside mirrors)."""
    return _transfer(Path(path), "pull")


def remove(path) -> None:
    """Delete a file or folder here and, inside a mirror, in storage too (stale outputs of a re-run)."""
    p = Path(path)
    u = uri(p)
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
    if u is not None:
        _remove_remote(u)


def _remove_remote(u: str) -> None:
    import pyarrow.fs as pafs

    fs, base = _fs(u)
    kind = fs.get_file_info(base).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(base)
    elif kind == pafs.FileType.File:
        fs.delete_file(base)


def write_text(path: str, text: str) -> None:
    """Write a whole small file, local (atomically) or in storage."""
    if is_remote(path):
        fs, p = _fs(path)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)


def read_text(path: str) -> str | None:
    """A small file's text, local or in storage; None when it does not exist."""
    if not is_remote(path):
        p = Path(path)
        return p.read_text() if p.exists() else None
    import pyarrow.fs as pafs

    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def read_texts(folder: str) -> list[str]:
    """The texts of a folder's small files (local or in storage), by file name; [] when it is missing."""
    if not is_remote(folder):
        d = Path(folder)
        return [f.read_text() for f in sorted(d.iterdir()) if f.is_file()] if d.is_dir() else []
    fs, base = _fs(folder)
    return [read_text(_join(folder.rstrip("/"), rel)) or "" for rel in sorted(_remote_files(fs, base))]


def exists(path) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, p = _fs(str(path))
    return fs.get_file_info(p).type != pafs.FileType.NotFound


# ---------------------------------------------------------------- reading URIs on any node


def local(path) -> str:
    """A local path for ``path``: unchanged when local; for a URI, this node's mirror of it when one is
    in sync, else a cached download that is refreshed when the stored files change."""
    if not is_remote(path):
        return str(path)
    u = str(path).rstrip("/")
    mirrored = _in_a_mirror(u)
    if mirrored is not None:
        return str(mirrored)
    fs, base = _fs(u)
    listing = _remote_files(fs, base)
    if not listing:
        raise FileNotFoundError(f"not found in storage: {u}")
    target = cache_dir() / "fetched" / _key(u) / Path(base).name
    stamp = target.parent / ".listing.json"
    signature = json.dumps({"uri": u, "files": sorted(listing.items())})
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several actors on one node may ask at once: one downloads, the others wait and reuse it.
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == signature):
            _download(fs, base, listing, target)
            stamp.write_text(signature)
    return str(target)


def _download(fs, base: str, listing: dict, target: Path) -> None:
    import pyarrow.fs as pafs

    tmp = target.with_name(target.name + f".part{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pairs = []
    for rel in listing:
        dst = tmp / rel if rel else tmp
        dst.parent.mkdir(parents=True, exist_ok=True)
        pairs.append((fs, _join(base, rel), pafs.LocalFileSystem(), str(dst)))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda a: _copy(*a), pairs))
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    tmp.replace(target)


def _in_a_mirror(u: str) -> Path | None:
    """This node's mirror copy of ``u`` when its files match storage (the driver's own outputs)."""
    runs = cache_dir() / "runs"
    for mark in runs.glob(f"*/{MARK}") if runs.is_dir() else []:
        base = mark.read_text()
        if u == base or u.startswith(base + "/"):
            candidate = mark.parent / u[len(base):].lstrip("/")
            plan = _plan(candidate, "pull") if candidate.exists() else None
            if plan is not None and not plan[1]:
                return candidate
    return None
