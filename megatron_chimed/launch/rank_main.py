"""How a rank ends on a user's mistake: one line, said once, no tracebacks.

A bad path, a data file lacking a field, a config that cannot work, or a Ctrl-C during start-up
found inside the ranks would otherwise print one traceback per rank and then torchrun's
ChildFailedError block. Instead:

* under our launcher (launch/torchrun.py `torchrun`, which names a file in CHIMED_ERROR_FILE),
  the first rank to fail hands its one line (and exit status) over in that file and exits 0, so
  torchrun has no failure to report; the launcher prints the line once, stops any rank still
  waiting for the failed one, and exits with the status (2; 130 for a Ctrl-C);
* started otherwise (launch/torchrun.sh, the Slurm job), rank 0 prints the line and every rank
  exits with the status; torchrun then lists the exit codes. User errors come from the config
  and the files every rank reads alike, so rank 0 has the line.

An error on one rank often makes the others fail too (a closed connection in a collective): an
error raised once a line was handed over, or after a start-up Ctrl-C, is taken as that
consequence and ends the rank quietly. Anything else is a bug and keeps its traceback, as does
everything with CHIMED_DEBUG=1.

    python -m megatron_chimed.launch.rank_main MODULE [args...]

runs `MODULE.main(args)` so: the launcher starts every rank this way. It also sets up the rank's
logging (run_log.py): the console quietened, and rank 0 appending to CHIMED_LOG_FILE when the
launching command keeps a log.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

ERROR_FILE_ENV = "CHIMED_ERROR_FILE"
USER_STATUS = 2


# Exceptions that mean the input (config, files, paths) is wrong, not our code; by name, so that
# telling them apart imports nothing (eval's pulls in torch; `chimed plan` runs without it).
USER_ERRORS = {
    ("megatron_chimed.config.load", "ConfigError"),
    ("megatron_chimed.data.jsonio", "DataError"),
    ("megatron_chimed.eval.errors", "DataFormatError"),
    ("megatron_chimed.checkpoint", "CheckpointError"),
    ("megatron_chimed.training.run_lock", "RunLocked"),
}
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(err: BaseException) -> bool:
    if isinstance(err, USER_OS_ERRORS):
        return True
    return any((cls.__module__, cls.__qualname__) in USER_ERRORS for cls in type(err).__mro__)


def _status(err: BaseException) -> int | None:
    """The exit status of a reportable error; None for a bug."""
    from megatron_chimed.training import startup

    if isinstance(err, startup.StartupInterrupted) or startup.interrupted():
        return startup.ABORT_STATUS
    if is_user_error(err):
        return USER_STATUS
    return None


def hand_over(path: str | os.PathLike, status: int, message: str) -> bool:
    """Write the report unless another rank did first (a hard link fails on an existing
    name); whether this one is the report."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"status": status, "message": message}), encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def read_report(path: str | os.PathLike) -> tuple[int, str] | None:
    """(status, message) a rank handed over, or None."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return int(report["status"]), str(report["message"])


def report_errors(name: str, call: Callable[[], int | None]) -> int:
    """`call()`'s status; a user error or a start-up Ctrl-C as described above. `name`
    (e.g. "chimed train") starts the line when this rank prints it itself."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    try:
        result = call()
        return result if isinstance(result, int) else 0  # smoke's main returns its loss
    except Exception as err:  # StartupInterrupted is an Exception; KeyboardInterrupt is not
        if os.environ.get("CHIMED_DEBUG"):
            raise
        status = _status(err)
        consequence = error_file is not None and read_report(error_file) is not None
        if status is None and not consequence:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if error_file is not None:
            if status is not None:
                hand_over(error_file, status, message)
            return 0  # the launcher reports it; torchrun has nothing to add
        if int(os.environ.get("RANK", "0")) == 0:
            prefix = "" if message.startswith(f"{name}:") else f"{name}: "
            print(prefix + message, file=sys.stderr, flush=True)
        return status or 1


def main(argv: list[str]) -> int:
    from megatron_chimed import run_log

    module, args = argv[0], argv[1:]
    rank0 = int(os.environ.get("RANK", "0")) == 0
    run_log.quiet_console(rank0)  # before the module's imports raise megatron's warnings
    log_file = os.environ.get(run_log.LOG_FILE_ENV) if rank0 else None
    with run_log.command_log(log_file, rank0):
        return report_errors(module, lambda: importlib.import_module(module).main(args))


if __name__ == "__main__":  # spawned helpers re-import __main__: nothing runs then
    sys.exit(main(sys.argv[1:]))
