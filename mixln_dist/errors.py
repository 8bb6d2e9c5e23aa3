"""The one family of errors a user can fix: every message names the problem and the fix.

Entry points catch `MixLNError` (and only it), print `error: <message>` on one line and exit with
`EXIT_USER_ERROR`: the input was wrong, so running the same command again cannot succeed (a scheduler should not
retry it). Any other exception is a bug in mixln_dist or a failure of the machine; it keeps its traceback and
exits 1 (Python's own code for an uncaught exception), which is worth a retry or a bug report.

This module imports nothing, so every layer of the package may raise these errors. The model package keeps its
own `ModelConfigError` (it imports nothing of the rest); the config system turns it into a `ConfigError`.
"""

EXIT_USER_ERROR = 2  # the same code argparse uses for a bad command line: both are the user's to fix


class MixLNError(Exception):
    """Base of every error a user can fix."""


class ConfigError(MixLNError):
    """A configuration that cannot run: an unknown key, a wrong type or value, impossible batch arithmetic."""


class DataError(MixLNError):
    """Text, a tokenizer or prepared shards that are missing, damaged or do not fit the run."""


class CheckpointError(MixLNError):
    """A checkpoint that is missing, incomplete, damaged or does not fit the run."""


class ExportError(MixLNError):
    """A Hugging Face export or import that cannot proceed."""


class AnalysisError(MixLNError):
    """A depth analysis that cannot run as asked."""


class UsageError(MixLNError):
    """A command-line argument that cannot work with what it points at (a window longer than the model's)."""


class RunError(MixLNError):
    """A run that cannot start or go on where it is: its directory is in use by another run or not writable,
    its disk is full, its rendezvous port is taken."""


class DivergenceError(MixLNError):
    """Training that has stopped making sense numerically (non-finite losses or gradients, repeated spikes).
    Running it again the same way would diverge again, so it counts as a user error: change the recipe."""


class StudyError(MixLNError):
    """A study (launch/norm_study.py) that cannot go on: a run's training, analysis or evaluation failed (its log
    says why), or the study folder holds runs of another recipe."""
