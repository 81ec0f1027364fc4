"""What the command-line entry points share: a mistake in the input ends in one line that says what was wrong
and what to do, the way argparse reports a bad option, not in a traceback.

    if __name__ == "__main__":
        raise SystemExit(cli.run(main, "python -m minifcn.train"))

minifcn raises ValueError, OSError or RuntimeError (a missing file, a mask value outside the classes, no GPU,
a checkpoint for another model, ...) with a message written for the user, and FloatingPointError when the loss
diverges, so those are printed as they are. RuntimeError's subclasses (NotImplementedError, RecursionError,
CuPy's CUDA errors) are bugs or a broken device, and keep their traceback like every other exception. Set
MINIFCN_TRACEBACK=1 to see the traceback of a user error too.
"""
import os
import sys


def for_the_user(e):
    """An error minifcn raised with a message for the user: ValueError, OSError, FloatingPointError, or
    RuntimeError itself (not NotImplementedError, RecursionError or CuPy's CUDA errors, which subclass it)."""
    if isinstance(e, RuntimeError):
        return type(e) is RuntimeError
    return isinstance(e, (ValueError, OSError, FloatingPointError))


def run(main, prog):
    """main()'s exit status; for an error in the input, 'prog: error: message' on stderr and status 2."""
    try:
        return main()
    except Exception as e:
        if os.environ.get("MINIFCN_TRACEBACK") or not for_the_user(e):
            raise
        print(f"{prog}: error: {e}\n(MINIFCN_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        return 2
