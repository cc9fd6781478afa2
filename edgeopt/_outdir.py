"""Output directories: checked before work starts, held by one writer, filled through a
staging folder.

One run writes an ``--out`` at a time: it holds an exclusive ``flock`` on
``OUT/.edgeopt.lock`` (which names its pid) from the first file it writes to the last, and a
second writer is refused, naming that pid. A non-empty ``--out`` holding another run's
output is refused unless ``--overwrite``, which replaces it whole, never merging.

Artifacts are written into ``OUT/.edgeopt-partial-<pid>-*/`` and renamed into place only
when the run has produced all of them, ``report.json`` last; a ``.edgeopt-committing-<pid>-*``
list names the files being renamed, and an overwritten run's files wait in
``.edgeopt-old-<pid>-*`` until the new ones are in. A run killed at any point is finished
or undone by the next start, which removes the staging folders of dead processes (and puts
an interrupted overwrite's old files back). A folder this run created is removed again if
the run fails. Temporary folders go under ``$TMPDIR/edgeopt-<pid>-*``, removed at exit and,
after a kill, by the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
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


LOCK = ".edgeopt.lock"
_STALE = re.compile(r"^\.edgeopt-(partial|old|committing)-(\d+)-")
_TEMP = re.compile(r"^edgeopt-(\d+)-")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(out: Path) -> list[str]:
    """Finish or undo what dead runs left in ``out``; returns the names removed.

    A commit that did not finish (its ``committing`` list is still there) is undone: its
    files go, and an overwritten run's files come back. Staging folders go.
    """
    if not out.is_dir():
        return []
    stale: dict[str, dict[int, Path]] = {"partial": {}, "old": {}, "committing": {}}
    removed = []
    for entry in out.iterdir():
        match = _STALE.match(entry.name)
        if match and not pid_alive(int(match[2])):
            stale[match[1]][int(match[2])] = entry
    for pid, marker in stale["committing"].items():
        _undo_commit(out, marker, stale["old"].pop(pid, None))
        removed.append(marker.name)
    for entry in (*stale["partial"].values(), *stale["old"].values()):
        _remove(entry)
        removed.append(entry.name)
    return removed


def _undo_commit(out: Path, marker: Path, old: Path | None) -> None:
    """Take back a commit that did not finish, from its marker: ``{"new": [...], "old":
    [...]}``. Every previous file is moved aside before any new one comes in, so a previous
    file still in ``old/`` means whatever has its name in ``out`` is new: it goes, the
    previous one comes back; a new name without a previous file goes too."""
    try:
        plan = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        plan = {}
    plan = plan if isinstance(plan, dict) else {}

    def names(key: str) -> list[str]:
        value = plan.get(key)
        return [n for n in value if isinstance(n, str) and "/" not in n
                and not n.startswith(".")] if isinstance(value, list) else []

    previous = names("old")
    for name in previous:
        if old is not None and (old / name).exists():
            (out / name).unlink(missing_ok=True)
            os.replace(old / name, out / name)
    for name in names("new"):
        if name not in previous:
            (out / name).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    marker.unlink(missing_ok=True)


@contextlib.contextmanager
def process_temp() -> Iterator[Path]:
    """A temporary folder for this process, ``$TMPDIR/edgeopt-<pid>-*``, that every library
    (and every worker, through ``TMPDIR``) writes its temporary files under; removed at the
    end. Those of dead processes are removed first."""
    base = Path(tempfile.gettempdir())
    try:
        for entry in base.iterdir():
            match = _TEMP.match(entry.name)
            if match and int(match[1]) != os.getpid() and not pid_alive(int(match[1])):
                _remove(entry)
    except OSError:
        pass
    folder = Path(tempfile.mkdtemp(prefix=f"edgeopt-{os.getpid()}-", dir=base))
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(folder, ignore_errors=True)


class OutputLock:
    """An exclusive ``flock`` on ``OUT/.edgeopt.lock``, which holds the holder's pid."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                msg = (f"--out {self.out} is being written by another edgeopt run (pid "
                       f"{holder}); wait for it to finish, or choose another folder")
                raise OutputError(msg) from e
            try:                        # the holder before us may have removed the file
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)   # while still held: the next writer re-checks
        os.close(self._fd)
        self._fd = None


def _previous_run(out: Path, staging: Path | None = None) -> list[str]:
    return sorted(e.name for e in out.iterdir()
                  if e.name != LOCK and (staging is None or e != staging)
                  and not _STALE.match(e.name))


@contextlib.contextmanager
def claim_output(out: Path, *, overwrite: bool = False,
                 inputs: tuple[Path, ...] = ()) -> Iterator[Staging]:
    """Hold ``out`` for this run and stage its files; ``Staging.commit`` lands them.

    Raises OutputError when another run holds ``out``, or when it holds a previous run's
    output and ``overwrite`` is not set (or it holds files that are no edgeopt output).
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out)
    staging = None
    try:
        lock.acquire()
        clean_stale(out)
        previous = _previous_run(out)
        if previous and not overwrite:
            shown = ", ".join(previous[:3]) + (", ..." if len(previous) > 3 else "")
            msg = (f"--out {out} already holds output ({shown}); pass --overwrite to "
                   "replace it whole, or choose another folder")
            raise OutputError(msg)
        inside = [p for p in inputs if p.exists() and p.resolve().parent == out.resolve()]
        if previous and inside:
            msg = (f"--overwrite would remove the input {inside[0]}, which is inside --out "
                   f"{out}; choose another output folder")
            raise OutputError(msg)
        if previous and "report.json" not in previous:
            msg = (f"--out {out} holds files that are not an edgeopt run's ({previous[0]}, "
                   "...); --overwrite replaces only an edgeopt output folder: choose another")
            raise OutputError(msg)
        staging = Staging(out, created=created, replace=bool(previous))
        yield staging
    except BaseException:
        if staging is not None:
            staging.discard()
        raise
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()             # only when this run left nothing in it


class Staging:
    """A scratch folder inside ``out`` whose files are renamed into place on commit."""

    def __init__(self, out: Path, *, created: bool | None = None, replace: bool = False) -> None:
        self.out = out
        self._created_out = not out.exists() if created is None else created
        self._replace = replace
        out.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".edgeopt-partial-{os.getpid()}-", dir=out))
        self.scratch = self.dir / "scratch"
        self.scratch.mkdir()

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, names: list[str]) -> list[Path]:
        """Move the named staged files into ``out``: weights before the files naming them,
        ``report.json`` last. With ``replace``, the previous run's files leave first."""
        order = sorted(names, key=lambda n: (n == "report.json", not n.endswith(".bin"), n))
        previous = _previous_run(self.out, self.dir) if self._replace else []
        # The plan first, so a kill at any later point can be undone by the next start.
        fd, marker = tempfile.mkstemp(prefix=f".edgeopt-committing-{os.getpid()}-",
                                      dir=self.out)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"new": order, "old": previous}, f)
            f.flush()
            os.fsync(f.fileno())
        old = None
        final = []
        try:
            if previous:
                old = Path(tempfile.mkdtemp(prefix=f".edgeopt-old-{os.getpid()}-",
                                            dir=self.out))
                for name in previous:
                    os.replace(self.out / name, old / name)
            for name in order:
                target = self.out / name
                os.replace(self.dir / name, target)
                final.append(target)
        except BaseException:
            _undo_commit(self.out, Path(marker), old)
            raise
        os.unlink(marker)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
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
