"""Writing a command's outputs without destroying anything: an output that is one of the
command's inputs is always refused, an existing output only replaced with `--overwrite`, and
then atomically (written beside under a temporary name, then renamed over it), so a failed or
killed write leaves the old file whole."""

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from maskrenderer_jax.cli_errors import UserError


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(
    outputs: dict[str, str | os.PathLike | None],
    inputs: Iterable[str | os.PathLike | None],
    *,
    overwrite: bool,
) -> None:
    """Refuses (UserError naming the flag and path) an output that is an input, or lies inside
    an input folder, or exists without `overwrite`; `outputs` maps flag -> path (None: unused)."""
    inputs = [Path(p).expanduser() for p in inputs if p]
    problems = []
    for flag, out in outputs.items():
        if not out:
            continue
        out = Path(out).expanduser()
        clash = [p for p in inputs if _same(out, p) or p.resolve() in out.resolve().parents]
        if clash:
            problems.append(f"{flag} {out} would overwrite the input {clash[0]}; write elsewhere")
        elif out.exists() and not overwrite:
            problems.append(f"{flag} {out} exists; pass --overwrite to replace it")
    if problems:
        raise UserError("; ".join(problems))


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write (a file or a folder); on success renames
    it to `path` (an existing file is replaced atomically; an existing folder is moved aside
    first, then removed), on failure removes it and leaves `path` as it was."""
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix stays last: writers that append one (np.savez, savemat) leave the name alone.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            tmp.replace(path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
