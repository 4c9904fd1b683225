"""One exception type for bad input, so callers (and ROS nodes) can report it cleanly."""


class InputError(ValueError):
    """Input that the engine refuses; the message names the problem."""
