"""Errors meant for people, not stack traces.

Every failure caused by the user's input or environment is raised as a
``TrainerError`` whose message is one sentence saying what was found and what
to do. The CLI prints only that sentence; the node layer shows it on the node.
"""


class TrainerError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole explanation."""


class ModelLoadError(TrainerError):
    """The base checkpoint cannot be used."""


class DatasetError(TrainerError):
    """The training images or captions cannot be used."""


class SettingsError(TrainerError):
    """A training or LoRA setting is out of range."""


class OutputPathError(TrainerError):
    """A file name would leave its target folder or cannot be written."""


class CheckpointLayoutError(ModelLoadError):
    """A checkpoint of a known family whose tensors do not fit that family's architecture; the loader
    names the file and the family in front of the detail."""
