"""The one base class for errors caused by the user's input (a bad file, config, model dir or path): the CLI prints
their message in one line and exits with status 2, never a traceback. Each stage keeps its own subclass (DataError,
ConfigError, BackboneError, ModelLoadError, TrainError) so the message's origin stays clear. A leaf module."""


class UserError(Exception):
    """Bad input; the message names the file / line / field and says what to do."""
