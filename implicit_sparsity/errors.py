"""Typed errors: each one is reported to a user as a single clear line by the CLI."""


class ImplicitSparsityError(Exception):
    """Base class of every error the toolkit raises on bad input."""


class ConfigError(ImplicitSparsityError, ValueError):
    """A configuration value is invalid (unknown name, value out of range, bad file)."""


class DatasetNotFoundError(ImplicitSparsityError, FileNotFoundError):
    """A data set's files are not where they were looked for."""


class RunStateError(ImplicitSparsityError):
    """A run folder cannot be used as asked (finished, or made with another config)."""


class StorageError(ImplicitSparsityError, OSError):
    """A file could not be written (full disk, no permission); nothing half-written is left."""


class DivergedError(ImplicitSparsityError):
    """Training produced a non-finite loss; the run is marked diverged and not resumed."""


class ProofError(ImplicitSparsityError):
    """A slim model's outputs differ from the original's (or are not finite)."""


class DataFormatError(ImplicitSparsityError, ValueError):
    """A data file is damaged, of another format, or does not match its data set."""


class NonFiniteError(ImplicitSparsityError, ValueError):
    """A model holds NaN / inf (a diverged run): nothing measured on it would mean anything."""


class PackingError(ConfigError):
    """Runs cannot be trained as one packed model (they differ, or resume from different
    epochs): each is trained on its own instead."""


class ModelTraceError(ImplicitSparsityError):
    """The model cannot be traced with torch.fx (data-dependent control flow, say)."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an error's message, at most `limit` characters (its type's name
    when the message is empty): what a one-line refusal quotes of a foreign error."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class AnalysisBudgetError(ImplicitSparsityError):
    """The removal's analysis of a model ran past its time or memory budget: refused before
    the machine hangs or swaps; nothing was removed."""


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that every `with` block unwinds: a staged
    output is removed, locks are released, nothing half-written is left. A BaseException,
    as KeyboardInterrupt is, so that no `except Exception` swallows it."""
