"""One exception family: everything a user can cause is a KernelibError."""


class KernelibError(Exception):
    """Base class of every error a user of kernelib can cause."""


class ConfigError(KernelibError):
    """A configuration or parameter is unknown, of the wrong type or out of range."""


class DataError(KernelibError):
    """A dataset, split or array is missing or malformed."""


class MemberError(KernelibError):
    """A member model cannot be found, read or used."""


class IncompatibleMembersError(MemberError):
    """Members disagree on input shape, classes or output activation."""


class MergeError(KernelibError):
    """A merge strategy cannot be applied to the members or data given."""


class ExportError(KernelibError):
    """An export could not be written or failed verification in its runtime."""


class PipelineError(KernelibError):
    """The run folder or the stage chain is not in a usable state."""


class StageFailedError(PipelineError):
    """A stage notebook raised; the executed notebook and its report were still written."""
