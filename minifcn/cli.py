"""What the command-line entry points share: a mistake in the input ends in one line that says what was wrong
and what to do, the way argparse reports a bad option, not in a traceback.

    if __name__ == "__main__":
        raise SystemExit(cli.run(main, "python -m minifcn.train"))

minifcn raises ValueError, RuntimeError or OSError (a missing file, a mask value outside the classes, no GPU,
a checkpoint for another model, ...) with a message written for the user, so those are printed as they are.
Set MINIFCN_TRACEBACK=1 to see the traceback too. Other exceptions are bugs and keep their traceback.
"""
import os
import sys

USER_ERRORS = (ValueError, RuntimeError, OSError, FloatingPointError)


def run(main, prog):
    """main()'s exit status; for an error in the input, 'prog: error: message' on stderr and status 2."""
    try:
        return main()
    except USER_ERRORS as e:
        if os.environ.get("MINIFCN_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}\n(MINIFCN_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        return 2
