"""The run directory: every file name, one way to write atomically, one way to read, and
the lock that keeps two processes out of one run. Imports no torch.

A run directory holds::

    config.yaml       the resolved config            metrics.json   the final evaluation
    metrics.jsonl     one line per epoch             checkpoint.pt  the last checkpoint
    nc.json, nc.npz   neural-collapse figures        report/        pictures and report.md
    log.txt           the output of a grid run       tb/            TensorBoard events
    posthoc_<method>.json   a post-hoc correction (tau-norm, logit adjustment) of the run
    .lock             held by the process writing the run

Atomic writes go to a temporary file in the same folder, are flushed to disk, and replace
the target with one rename, so a reader (or a crash) sees the old file or the new one,
never half of one. Files get the usual permissions (0644 under a 022 umask).
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import RunDirError

CONFIG = "config.yaml"
METRICS = "metrics.json"
METRICS_LOG = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
NC_JSON = "nc.json"
NC_NPZ = "nc.npz"
POSTHOC = "posthoc_{method}.json"  # .format(method=...)
LOG = "log.txt"
REPORT_DIR = "report"
TB_DIR = "tb"
COMPILE_ERROR = "compile_error.txt"  # why torch.compile failed, when the run fell back to eager
WANDB_ID = "wandb_id.txt"  # the W&B run id of a run directory, so --resume continues that run
LOCK = ".lock"
# what makes a folder a run directory: a run writes config.yaml before its first step
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, METRICS_LOG)


#: what a run (and the commands on it) write into its directory, besides RUN_FILES
RUN_EXTRAS = (LOG, LOCK, NC_JSON, NC_NPZ, REPORT_DIR, TB_DIR, COMPILE_ERROR, WANDB_ID, "wandb")


def is_run_entry(name: str) -> bool:
    """Whether a directory entry is one a run or a command on it writes (an interrupted atomic
    write leaves ``.NAME.XXXX.tmp``)."""
    return (name in RUN_FILES or name in RUN_EXTRAS or (name.startswith("posthoc_") and name.endswith(".json"))
            or (name.startswith(".") and name.endswith(".tmp")))


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a run: any of ``RUN_FILES``."""
    return any((Path(folder) / f).is_file() for f in RUN_FILES)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    if path.is_dir():  # else the rename would fail naming the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def atomic_write_json(path: Path, obj: Any, indent: Optional[int] = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def read_json(path: Path, what: str = "") -> Any:
    """A JSON file; a missing or broken one is a one-line RunDirError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist{f' ({what})' if what else ''}") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:120]}); "
                          "it is damaged: restore it or run the command that writes it again") from None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a crash while appending) is skipped."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise RunDirError(f"{path} line {i + 1} is not JSON; the file is damaged") from None
    return out


def describe_os_error(e: OSError, doing: str) -> str:
    """One line for a failed file operation: what was done, on which file, why."""
    name = getattr(e, "filename", None)
    why = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EDQUOT: "disk quota exceeded",
           errno.EEXIST: "a file is in the way where a folder is needed; choose another path",
           errno.ENOTDIR: "part of the path is a file, not a folder; choose another path",
           errno.EISDIR: "it is a folder where a file is needed; give a file name"}.get(e.errno or -1, e.strerror or type(e).__name__)
    return f"{doing}{f' {name}' if name else ''} failed: {why}"


class RunLock:
    """An exclusive advisory lock on ``RUN_DIR/.lock`` for as long as a run writes there:
    a second process that tries to write the same run directory is refused at once (the lock
    goes with the process, also when it is killed)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"another process is writing the run directory {self.path.parent}; wait for it "
                                  "to finish or choose another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
