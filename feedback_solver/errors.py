"""Errors that the CLI reports as one line (beside ValueError, KeyError and FileNotFoundError)."""


class OpenGLUnavailable(RuntimeError):
    """No usable headless OpenGL context; the message names the packages and PYOPENGL_PLATFORM."""
