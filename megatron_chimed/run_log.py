"""Every command's log file, and a console that shows what a user acts on.

One helper for all commands: `command_log(path)` appends everything (our lines, megatron-core's,
every library warning) to a log file kept with the command's output, while the console shows
our own lines, errors and warnings of the libraries other than megatron-core:

    chimed train       RUN_DIR/train.log          chimed eval      RUN_DIR/eval.log
    chimed pipeline    RUN_DIR/pipeline.log       chimed generate  OUTPUT.log (batch mode)
    preprocess_data    PREFIX.preprocess.log      tools/score.py   OUTPUT.log
    convert tools      OUT.log                    a sweep          RUN_DIR/sweep.log

megatron-core's deprecation notices, its per-parameter bucket dumps and configuration reprs go
to the file only. Its "Transformer Engine and Apex are not installed" warning is expected on a
CPU machine (torch's kernels run by design) and is shown there not at all; on a GPU, where it
means slow fallbacks, it is shown once. Records emitted before the file is known (warnings raised
while megatron-core is imported) wait in a bounded buffer and go to the file when it opens.

`command_log` sets CHIMED_LOG_FILE while it is open: ranks launched then (launch/torchrun.py)
append their rank 0's lines to the same file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

LOG_FILE_ENV = "CHIMED_LOG_FILE"
CONSOLE_FORMAT = "%(asctime)s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
BUFFERED_RECORDS = 2000  # import-time warnings and start-up lines; bounded, oldest dropped
TE_APEX = ("Transformer Engine and Apex are not installed", "Apex is not installed")
OURS = ("megatron_chimed", "__main__")
FILE_ONLY = "file_only"  # `extra={FILE_ONLY: True}`: a record for the log file alone


def log_path_for(output: str | os.PathLike, suffix: str = ".log") -> Path:
    """The log beside an output file or folder: `a.jsonl` -> `a.jsonl.log`."""
    output = Path(output)
    return output.with_name(output.name + suffix)


def _on_gpu() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


class ConsoleFilter(logging.Filter):
    """What reaches the console; everything reaches the log file."""

    def __init__(self, rank0: bool = True) -> None:
        super().__init__()
        self.rank0 = rank0
        self.te_shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FILE_ONLY, False):
            return False
        name = record.name
        if name == "py.warnings":
            return self._warning(record.getMessage())
        if name.split(".")[0] in OURS:
            return record.levelno >= (logging.INFO if self.rank0 else logging.WARNING)
        if name == "megatron" or name.startswith("megatron."):
            return record.levelno >= logging.ERROR  # notices and dumps: the file
        return record.levelno >= logging.WARNING

    def _warning(self, text: str) -> bool:
        if any(marker in text for marker in TE_APEX):
            if not self.rank0 or self.te_shown or not _on_gpu():
                return False
            self.te_shown = True
            return True
        # Our own warnings are meant for the user; libraries' go to the file.
        return self.rank0 and f"{os.sep}megatron_chimed{os.sep}" in text.split(":", 1)[0]


class _Console(logging.StreamHandler):
    """stderr as it is when a record comes (a test harness swaps sys.stderr meanwhile)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


class _Buffer(logging.Handler):
    """Holds records until a log file opens (then replayed into it); bounded."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        del self.records[:-BUFFERED_RECORDS]


class _State:
    console: logging.Handler | None = None
    buffer: _Buffer | None = None
    files: dict[str, logging.Handler] = {}


def quiet_console(rank0: bool = True) -> None:
    """Route logging and warnings as this module says: at the start of a process, before
    megatron-core is imported (its import raises the warnings). Idempotent."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logging.getLogger("megatron_chimed").setLevel(logging.INFO if rank0 else logging.WARNING)
    if _State.console is not None and _State.console in root.handlers:
        for f in _State.console.filters:
            if isinstance(f, ConsoleFilter):
                f.rank0 = rank0
        return
    # A plain handler of an earlier logging.basicConfig would print everything a second time.
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    console = _Console()
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    console.addFilter(ConsoleFilter(rank0))
    root.addHandler(console)
    _State.console = console
    if not _State.files:
        _State.buffer = _Buffer()
        root.addHandler(_State.buffer)
    logging.captureWarnings(True)
    if not _on_gpu():
        # "No CUDA runtime is found, using CUDA_HOME=..." on importing torch's extension
        # loader: a CPU machine has none, by definition.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def attach_file(path: str | os.PathLike) -> logging.Handler:
    """Append every record to `path` from now on (with what the buffer held); once per path."""
    path = Path(path).resolve()
    key = str(path)
    if key in _State.files:
        return _State.files[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    if _State.buffer is not None:
        for record in _State.buffer.records:
            if record.levelno >= logging.INFO:
                handler.handle(record)
        root.removeHandler(_State.buffer)
        _State.buffer = None
    root.addHandler(handler)
    _State.files[key] = handler
    return handler


def detach_file(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
    _State.files = {k: h for k, h in _State.files.items() if h is not handler}


@contextlib.contextmanager
def command_log(
    path: str | os.PathLike | None, rank0: bool = True, export: bool = True
) -> Iterator[Path | None]:
    """A command's log: the console quietened (`quiet_console`) and, with `path`, every record
    appended to it until the block ends; CHIMED_LOG_FILE names it meanwhile for the ranks this
    command starts (`export`; not for a sweep, whose points keep logs of their own)."""
    quiet_console(rank0)
    if path is None:
        yield None
        return
    path = Path(path).resolve()
    added = str(path) not in _State.files
    handler = attach_file(path)
    previous = os.environ.get(LOG_FILE_ENV)
    if export:
        os.environ[LOG_FILE_ENV] = str(path)
    else:
        os.environ.pop(LOG_FILE_ENV, None)
    logging.getLogger("megatron_chimed").info("log: %s", path, extra={FILE_ONLY: True})
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(LOG_FILE_ENV, None)
        else:
            os.environ[LOG_FILE_ENV] = previous
        if added:  # a process may run several commands (tests, sweeps): one file at a time
            detach_file(handler)


def echo(message: str, err: bool = False) -> None:
    """`print` that also goes into the log file (results a user reads on the console)."""
    print(message, file=sys.stderr if err else sys.stdout, flush=True)
    logging.getLogger("megatron_chimed.output").info(message, extra={FILE_ONLY: True})


def run_tool(log: str | os.PathLike, body: Callable[[], object]) -> int:
    """A one-process tool's main (the converters): `body()` with its log at `log`, its result
    echoed; a bad input (ValueError / FileNotFoundError, which name the file and the key) is one
    line, exit status 2 (CHIMED_DEBUG=1: the traceback)."""
    with command_log(log):
        try:
            echo(str(body()))
        except (ValueError, FileNotFoundError) as err:
            if os.environ.get("CHIMED_DEBUG"):
                raise
            echo(f"error: {err}", err=True)
            return 2
    return 0
