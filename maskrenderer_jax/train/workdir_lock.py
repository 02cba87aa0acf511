"""One run per workdir: `workdir/run.lock`, held with flock(2) for the whole run and holding
the holder's host, pid and start time (for the message a second run prints).

The kernel drops an flock when its process ends, however it ends (SIGKILL included), so a
lock left by a dead run is stale by construction: the next run takes it over and says whose
it was. On a filesystem without flock support the run warns and goes on unlocked. In a
multi-process job only process 0 takes the lock (the others are the same run).
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from maskrenderer_jax.cli_errors import UserError

LOCK_FILE = "run.lock"


class WorkdirBusyError(UserError):
    """Another run holds the workdir."""


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {when})"


def _read(f) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        return {}


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Holds workdir/run.lock for the body; WorkdirBusyError (naming the holder) at once if
    another process holds it."""
    path = Path(workdir) / LOCK_FILE
    f = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(f)
            raise WorkdirBusyError(
                f"workdir {workdir} is in use by another run: {_describe(holder)}, lock "
                f"{path}. Wait for it to finish or stop it, or use another --workdir."
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            logging.warning("cannot lock %s (%s): make sure no other run uses %s", path, e, workdir)
            yield path
            return
        previous = _read(f)
        if previous:
            logging.warning("taking over %s: its holder, %s, is gone", path, _describe(previous))
        f.seek(0)
        f.truncate()
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        f.write(json.dumps(me))
        f.flush()
        try:
            yield path
        finally:
            f.seek(0)
            f.truncate()  # released: an empty lock file is nobody's
            f.flush()
    finally:
        f.close()  # drops the flock
