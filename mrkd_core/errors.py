"""Error types a user can cause. The CLI prints their message as one line, exit code 2.

Each message names the file or field at fault and says how to fix it.
"""

import re


class MRKDError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class ConfigError(MRKDError, ValueError):
    """A config field, experiment spec or CLI option is invalid."""


class DataError(MRKDError):
    """A dataset file or folder is missing, unreadable or not in the expected layout."""


class DownloadError(MRKDError):
    """A download failed, was truncated, or its checksum did not match."""


class StorageError(MRKDError):
    """The artifact store could not be read or written (server down, permissions, corruption)."""


class WeightsError(MRKDError):
    """Teacher weights could not be found or loaded."""


class TrainingDiverged(MRKDError):
    """The training loss or the weights became NaN or infinite (a learning rate too high, or bf16).

    Nothing is stored for the training; the message names the fields to change (``lr``,
    ``precision``). A retry of the same config would diverge again, so the flows do not retry it.
    """


class DeviceError(MRKDError):
    """The requested device is not available (e.g. CUDA asked for on a machine without a GPU)."""


def worker_message(exc: BaseException) -> str:
    """The one-line message of an error that PyTorch re-raised from a DataLoader worker.

    PyTorch rebuilds a worker's exception as ``type(exc)("Caught X in DataLoader worker
    process N.\\nOriginal Traceback ...")``; the original message is the traceback's last line.
    """
    text = str(exc)
    if not text.startswith("Caught ") or "\n" not in text:
        return text
    for line in reversed(text.splitlines()):
        head, sep, tail = line.partition(": ")
        if sep and head.rsplit(".", 1)[-1] == type(exc).__name__:
            return tail
    return text.splitlines()[0]


def unwrap_worker_errors(batches):
    """Iterate a DataLoader so that an MRKDError from a worker keeps its one-line message."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except MRKDError as exc:
            # Stop the workers now: left to the garbage collector, the iterator (held by the
            # traceback) waits 5 s per worker for them to exit.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            raise type(exc)(worker_message(exc)) from None
        yield batch


def unpickle_error(exc: BaseException) -> str:
    """One line for a failed ``torch.load(..., weights_only=True)``.

    torch's own message spans a dozen lines and advises loading with ``weights_only=False``
    or allow-listing the offending global: exactly what must not be done with a file of
    unknown origin. A refused file is reported as such; nothing in it ran.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "Weights only load failed" in text:
        m = re.search(r"WeightsUnpickler error: (.*?\.)(?:\s|$)", text)
        what = m.group(1) if m else "content other than tensors"
        return (f"refused to unpickle it: it holds Python objects other than tensors and plain data ({what}); "
                "nothing in it was run")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
