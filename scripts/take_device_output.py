"""Take what a device suite call brought back into the checkout, in one step.

    python scripts/take_device_output.py FILES_AT NAME [--root DIR] [--overwrite]

FILES_AT is the folder the call's OUT came back to; NAME names the call's record
(``<date>-<kind>-<letter>``, for example ``2026-11-30-h200-a``). The script

- copies ``suite.log``, ``env.json``, ``speed.json`` and ``suite.json``, and ``summary.md`` from
  ``runs.tar.gz``, to ``benchmarks/results/device_runs/NAME/`` (committed: the call's record);
- unpacks ``results.tar.gz`` into ``results/`` (a cell whose file is there already with other
  content is refused, unless ``--overwrite``);
- puts ``resume.tar`` at ``.data/resume.tar``, where the next call continues its runs, or
  removes a ``.data/resume.tar`` left from an earlier call when this one left none (a stale one
  would be resumed again);
- unpacks ``models.tar`` and keeps ``runs.tar.gz`` in ``runs/device/NAME/`` (git-ignored: the
  trained models, for ``allnc eval``, ``nc``, ``posthoc`` and ``report``);

and then names the README's results tables to render (``python scripts/render_results.py``).
Bad input ends in one line and exit status 2; nothing is written before every check passed.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ("suite.log", "env.json", "speed.json", "suite.json")
NAME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}-[a-z0-9]+-[a-z]$")


class Refused(Exception):
    pass


def _results_members(path: Path) -> dict[str, bytes]:
    """``results/<cell>.json`` members of results.tar.gz: {file name: content}."""
    out = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 2 or parts[0] != "results" or not parts[1].endswith(".json"):
                raise Refused(f"{path}: unexpected member {m.name!r} (a results tarball holds results/<cell>.json only)")
            out[parts[1]] = tf.extractfile(m).read()
    return out


def take(src: Path, name: str, root: Path, overwrite: bool = False) -> list[str]:
    """Do it; returns what was done, a line each."""
    if not NAME_RE.match(name):
        raise Refused(f"record name {name!r}: give <date>-<kind>-<letter>, e.g. 2026-11-30-h200-a")
    if not src.is_dir():
        raise Refused(f"{src} is not a folder: give the folder the device call's files came back to")
    if not (src / "suite.log").is_file():
        raise Refused(f"{src} has no suite.log: is it a device suite's OUT?")
    record = root / "benchmarks" / "results" / "device_runs" / name
    if record.exists() and not overwrite:
        raise Refused(f"{record} exists already: another NAME, or --overwrite to replace it")
    results = _results_members(src / "results.tar.gz") if (src / "results.tar.gz").is_file() else {}
    clash = [f for f, data in results.items()
             if (root / "results" / f).is_file() and (root / "results" / f).read_bytes() != data]
    if clash and not overwrite:
        raise Refused(f"results/{clash[0]} exists with other content ({len(clash)} such): --overwrite to replace "
                      "(a cell rerun on purpose)")
    summary = None
    if (src / "runs.tar.gz").is_file():
        with tarfile.open(src / "runs.tar.gz") as tf:
            if "summary.md" in tf.getnames():
                summary = tf.extractfile("summary.md").read()

    done = []
    record.mkdir(parents=True, exist_ok=True)
    for f in RECORD:
        if (src / f).is_file():
            shutil.copyfile(src / f, record / f)
    if summary is not None:
        (record / "summary.md").write_bytes(summary)
    done.append(f"record: {record.relative_to(root)}/ ({', '.join(sorted(p.name for p in record.iterdir()))})")
    (root / "results").mkdir(exist_ok=True)
    for f, data in sorted(results.items()):
        (root / "results" / f).write_bytes(data)
    done.append(f"results: {len(results)} files into results/" + (f" ({len(clash)} replaced)" if clash else ""))
    resume = root / ".data" / "resume.tar"
    if (src / "resume.tar").is_file():
        resume.parent.mkdir(exist_ok=True)
        shutil.copyfile(src / "resume.tar", resume)
        with tarfile.open(resume) as tf:
            cells = sorted({Path(n).parts[0] for n in tf.getnames()})
        done.append(f"resume: .data/resume.tar holds {', '.join(cells)}; the next call continues them")
    elif resume.is_file():
        resume.unlink()
        done.append("resume: this call left no unfinished runs; the earlier .data/resume.tar is removed")
    kept = root / "runs" / "device" / name
    if (src / "models.tar").is_file() or (src / "runs.tar.gz").is_file():
        kept.mkdir(parents=True, exist_ok=True)
        if (src / "runs.tar.gz").is_file():
            shutil.copyfile(src / "runs.tar.gz", kept / "runs.tar.gz")
            done.append(f"runs: runs.tar.gz (every run's config, logs and metrics) kept in {kept.relative_to(root)}/")
        if (src / "models.tar").is_file():
            with tarfile.open(src / "models.tar") as tf:
                tf.extractall(kept, filter="data")
                models = sorted({Path(n).parts[0] for n in tf.getnames()})
            done.append(f"models: {len(models)} run directories in {kept.relative_to(root)}/")
    done.append("next: python scripts/render_results.py (add a <!-- results:ID --> block to the README for any new "
                "table it names), then commit the record and results/")
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files_at", help="the folder the device call's OUT came back to")
    p.add_argument("name", help="the record's name: <date>-<kind>-<letter>")
    p.add_argument("--root", default=str(ROOT), help="the checkout (default: this script's)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        for line in take(Path(a.files_at), a.name, Path(a.root), a.overwrite):
            print(line)
    except (Refused, tarfile.TarError, OSError) as e:
        print(f"take_device_output: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
