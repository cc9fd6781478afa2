"""Output directories: checked before work starts, filled through a staging folder.

Artifacts are written into ``OUT/.edgeopt-partial-<pid>/`` and renamed into place only
when the run has produced all of them, so an interrupted or failed run leaves nothing
under a final name; a folder this run created is removed again if the run fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from edgeopt.errors import OutputError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_output_dir(out: Path, inputs: list[Path]) -> None:
    """Raise OutputError unless ``out`` can be created/written and is not an input."""
    out = out.absolute()
    for source in inputs:
        if source.exists() and out.resolve() == source.resolve():
            msg = f"--out {out} is the input model itself; choose a separate output folder"
            raise OutputError(msg)
    if out.exists() and not out.is_dir():
        msg = f"--out {out} exists and is not a folder; choose a folder"
        raise OutputError(msg)
    base = _nearest_existing(out)
    if not base.is_dir():
        msg = f"--out {out} cannot be created: {base} is a file, not a folder"
        raise OutputError(msg)
    # os.access says yes to root everywhere; a real probe also catches read-only mounts.
    try:
        probe = tempfile.mkdtemp(prefix=".edgeopt-probe-", dir=base)
    except OSError as e:
        msg = f"--out {out} is not writable ({e.strerror or e}); choose a writable folder"
        raise OutputError(msg) from e
    os.rmdir(probe)


class Staging:
    """A scratch folder inside ``out`` whose files are renamed into place on commit."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._created_out = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".edgeopt-partial-{os.getpid()}-", dir=out))
        self.scratch = self.dir / "scratch"
        self.scratch.mkdir()

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, names: list[str]) -> list[Path]:
        """Move the named staged files into ``out`` (weights before the files naming them)."""
        order = sorted(names, key=lambda n: (not n.endswith(".bin"), n))
        final = []
        for name in order:
            target = self.out / name
            os.replace(self.dir / name, target)
            final.append(target)
        self.discard()
        return final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def abort(self) -> None:
        """Remove everything this run wrote, including ``out`` if the run created it."""
        self.discard()
        if self._created_out:
            try:
                self.out.rmdir()
            except OSError:
                pass


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
