"""Errors that the CLI reports as one line (beside ValueError, KeyError, FileNotFoundError and OSError)."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """A library's error text folded onto one line and cut, to quote inside our own one-line message."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


class OpenGLUnavailable(RuntimeError):
    """No usable headless OpenGL context; the message names the packages and PYOPENGL_PLATFORM."""


class RanksDisagree(RuntimeError):
    """The ranks of a distributed run hold different states before training; the message names them."""


class Echo(ValueError):
    """Rank 0's refusal as another rank receives it: the CLI prints it once, from rank 0."""
