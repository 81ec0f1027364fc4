"""What the command-line entry points share: a mistake in the input ends in one line that says what was wrong
and what to do, the way argparse reports a bad option, not in a traceback; and what they write is written whole.

    if __name__ == "__main__":
        raise SystemExit(cli.run(main, "python -m minifcn.train"))

minifcn raises ValueError, OSError or RuntimeError (a missing file, a mask value outside the classes, no GPU,
a missing optional package such as scipy or h5py, a checkpoint for another model, ...) with a message written
for the user, and FloatingPointError when the loss diverges, so those are printed as they are. RuntimeError's
subclasses (NotImplementedError, RecursionError, CuPy's CUDA errors) are bugs or a broken device, and keep their
traceback like every other exception (ImportError too: a missing optional package is reported as a RuntimeError
that says what to install). Set MINIFCN_TRACEBACK=1 to see the traceback of a user error too.

Outputs: check_output_file / check_output_folder refuse a destination that cannot be written before the long
work starts, and atomic_write writes a file whole or not at all (a temporary file beside it, then a rename).
"""
import contextlib
import os
import sys
import tempfile


def for_the_user(e):
    """An error minifcn raised with a message for the user: ValueError, OSError, FloatingPointError, or
    RuntimeError itself (not NotImplementedError, RecursionError or CuPy's CUDA errors, which subclass it)."""
    if isinstance(e, RuntimeError):
        return type(e) is RuntimeError
    return isinstance(e, (ValueError, OSError, FloatingPointError))


def run(main, prog):
    """main()'s exit status; for an error in the input, 'prog: error: message' on stderr and status 2."""
    try:
        try:
            return main()
        finally:
            sys.stdout.flush()              # a pipe's buffered output meets a closed reader here, not at exit
    except BrokenPipeError:                 # `python -m minifcn.x | head`: the reader stopped reading; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (Python's exit flush would fail again)
        return 1
    except Exception as e:
        if os.environ.get("MINIFCN_TRACEBACK") or not for_the_user(e):
            raise
        print(f"{prog}: error: {e}\n(MINIFCN_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        return 2


def check_output_file(path, what="the output"):
    """Raise an OSError naming `path` (what: the option that gave it) if a file cannot be written there: the
    path is a folder, its folder does not exist, or files cannot be created in it. Writes nothing at `path`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder; give the name of the file to write in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} {path}: the folder {folder} does not exist; create it first "
                                f"(mkdir -p {folder}) or write somewhere else")
    _try_writing_in(folder, f"{what} {path}")


def check_output_folder(path, what="the output folder"):
    """Create folder `path` (with its parents) if needed and check that files can be written in it; an OSError
    naming it otherwise."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is a file, not a folder; give a folder (it is created if needed)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise type(e)(f"{what} {path}: cannot create the folder ({e.strerror}); write somewhere else") from e
    _try_writing_in(path, f"{what} {path}")


def _try_writing_in(folder, where):
    try:                                    # the test that matches what writing will do: read-only disks, ACLs, ...
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PermissionError(f"{where}: cannot write in {folder} ({e.strerror}); write somewhere else") from e


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """with atomic_write(path) as f: ... writes a temporary file beside `path` and renames it to `path` (os.replace)
    once the block ends. A failure (a full disk, Ctrl-C) leaves nothing at `path` and an older file there whole,
    where open(path, "w") would have emptied it first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".minifcn-", suffix=os.path.splitext(path)[1] + ".tmp", dir=folder)
    except OSError as e:                    # name the user's path, not the temporary one
        raise type(e)(f"cannot write {path} ({e.strerror}); check that the folder {folder} exists and "
                      "that you may write in it") from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes it private; the file gets what open() would give
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
