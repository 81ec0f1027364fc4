"""Course assignments: the reference solutions are in the package, marked; this writes the student version.

    python -m minifcn.assignments list          the assignments, their points and the functions they ask for
    python -m minifcn.assignments make OUT/     the student version of the package in OUT/minifcn/, and OUT/README.md

A reference solution is the body of a function between two comment lines, the words nbgrader and
Otter use:

    def im2col(x, kernel, ...):
        \"\"\"The specification: every shape.\"\"\"          <- kept: what the student reads
        N, C, H, W, ... = _geometry(...)                  <- kept: set-up and input checks
        # BEGIN SOLUTION
        ...                                               <- replaced by: raise NotImplementedError(...)
        # END SOLUTION

`make` copies the whole package and replaces every marked block by one `raise NotImplementedError`
at the block's indentation. The instructor's files (this one and grade.py, which holds the hidden
cases) are left out, and so is fast.py, so that every layer of the student's nets runs the student's
own ops. OUT/README.md tells the students what to write and how it is graded. Grade what comes back
with `python -m minifcn.grade OUT/`.

Adding an assignment (lessons/README.md, "Add an assignment", has the whole recipe with an example):
  1. mark the solution blocks in the package, and say in each docstring everything the checks require
     (shapes, dtypes, tie rules, what a cache holds): the block, its comments included, is stripped;
  2. register it here, the one place: an entry in ASSIGNMENTS (key -> title, marked functions), its loop
     specifications in SPECIFICATIONS (the handout's README names them; while graded they raise), and its
     key in OPTIONAL if it is extra credit;
  3. write its checks in grade.py with @check("A6", ...), after every existing check (a check's random
     cases are drawn from its position: a check inserted earlier changes the hidden cases of all after it);
  4. `python -m minifcn.assignments list` then says whether the markers, ASSIGNMENTS and the checks agree;
     `python -m minifcn.grade --only A6` must give full marks, and on the `make` output zero; plant bugs in
     tests/test_assignments.py and assert which checks each one fails.
"""
import argparse
import ast
import io
import shutil
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Not handed out: the instructor's files, and the fast paths (minifcn.fast holds a second, faster im2col
# and convolution, which the layers would run instead of the student's ops).
INSTRUCTOR_ONLY = ("assignments.py", "grade.py", "fast.py")
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"

# The registry: every assignment is listed here and nowhere else (grade.py holds each one's checks and points).
# key -> (title, the marked functions "module:qualname"; a method is "models.fcn:FCN16s.forward").
ASSIGNMENTS = {
    "A1": ("im2col and col2im", ["im2col:im2col", "im2col:col2im"]),
    "A2": ("convolution, forward and backward", ["ops.conv:conv2d_forward", "ops.conv:conv2d_backward"]),
    "A3": ("transposed convolution and the bilinear filler",
           ["ops.conv:conv_transpose2d_forward", "ops.conv:conv_transpose2d_backward",
            "ops.conv:bilinear_kernel", "ops.conv:bilinear_weight"]),
    "A4": ("the per-pixel softmax loss", ["ops.loss:softmax_cross_entropy"]),
    "A5": ("the FCN-16s skip, forward and backward",
           ["models.fcn:FCN16s.forward", "models.fcn:FCN16s.backward"]),
}
# Extra credit: graded, but not in the total ("40 / 40 (+6 optional)"). On Gradescope, set the assignment's total
# points to the required ones only.
OPTIONAL = {"A5"}
# The loop specifications ("module:name"), and the private helpers only they use: the students check their code
# against them (the handout's README names the public ones), and while graded the student's copies raise, so
# that a function that only calls its specification scores nothing.
SPECIFICATIONS = ["im2col:im2col_naive", "im2col:col2im_naive", "im2col:_patch_entries",
                  "ops.conv:conv2d_naive", "ops.conv:conv_transpose2d_naive"]


def solution_blocks(path):
    """[(qualname, begin line, end line, indent)] for every marked block of a .py file (lines 0-based)."""
    text = Path(path).read_text()
    lines = text.split("\n")
    if BEGIN not in text:
        return []
    owner = {}                                  # line -> qualname of the innermost function holding it

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    for i in range(child.lineno - 1, child.end_lineno):
                        owner[i] = name
                visit(child, name + ".")
    visit(ast.parse(text), "")

    comments = {tok.start[0] - 1 for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}       # markers are comment lines, never text in a string
    blocks, begin = [], None
    for i, line in enumerate(lines):
        if i not in comments:
            continue
        if line.strip() == BEGIN:
            if begin is not None:
                raise ValueError(f"{path}:{i + 1}: {BEGIN} inside another block (opened at line {begin + 1})")
            begin = i
        elif line.strip() == END:
            if begin is None:
                raise ValueError(f"{path}:{i + 1}: {END} without a {BEGIN} before it")
            indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
            if not line.startswith(indent + "#") or begin not in owner:
                raise ValueError(f"{path}:{begin + 1}-{i + 1}: a block must sit inside a function, its two "
                                 "markers at the same indentation")
            blocks.append((owner[begin], begin, i, indent))
            begin = None
    if begin is not None:
        raise ValueError(f"{path}:{begin + 1}: {BEGIN} is never closed by {END}")
    return blocks


def strip_solutions(path):
    """The student's text of one file: every marked block replaced by a NotImplementedError."""
    lines = Path(path).read_text().split("\n")
    for qualname, begin, end, indent in reversed(solution_blocks(path)):
        lines[begin:end + 1] = [f'{indent}raise NotImplementedError("{qualname}: write this (see the docstring)")']
    return "\n".join(lines)


def marked_functions(package=PACKAGE):
    """{"module:qualname": number of blocks} over the package, e.g. {"im2col:im2col": 1, ...}."""
    found = {}
    for path in sorted(Path(package).rglob("*.py")):
        module = ".".join(path.relative_to(package).with_suffix("").parts)
        for qualname, *_ in solution_blocks(path):
            key = f"{module}:{qualname}"
            found[key] = found.get(key, 0) + 1
    return found


def check_markers(package=PACKAGE):
    """Every listed function has a marked block, every marked block belongs to an assignment, and every
    assignment has checks in grade.py (raises ValueError saying what disagrees)."""
    found = set(marked_functions(package))
    listed = {f for _, functions in ASSIGNMENTS.values() for f in functions}
    if found != listed:
        raise ValueError(f"markers and ASSIGNMENTS disagree: marked but in no assignment {sorted(found - listed)}, "
                         f"listed but not marked {sorted(listed - found)}")
    from .grade import CHECKS                 # (grade.py refuses a check of an assignment not listed here)
    unchecked = [key for key in ASSIGNMENTS if not any(c.assignment == key for c in CHECKS)]
    if unchecked:
        raise ValueError(f"{', '.join(unchecked)} in ASSIGNMENTS but no check in grade.py: write its checks with "
                         f'@check("{unchecked[0]}", ...) (it would score 0 of 0 points)')


def specification_list():
    """The public loop specifications, by file, as the handout's README names them: "`im2col_naive` and
    `col2im_naive` in `minifcn/im2col.py`, `conv2d_naive` ... in `minifcn/ops/conv.py`"."""
    by_file = {}
    for entry in SPECIFICATIONS:
        module, name = entry.split(":")
        if not name.startswith("_"):
            by_file.setdefault(f"minifcn/{module.replace('.', '/')}.py", []).append(f"`{name}`")
    listed = [(", ".join(names[:-1]) + " and " if len(names) > 1 else "") + f"{names[-1]} in `{path}`"
              for path, names in by_file.items()]
    return ", ".join(listed)


def make(out, force=False):
    """Write the student version of the package to out/minifcn/, and out/README.md; returns the package folder."""
    check_markers()
    target, readme = Path(out) / "minifcn", Path(out) / "README.md"
    for path in (target, readme):
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; remove it or pass --force to overwrite it")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *INSTRUCTOR_ONLY))
    for path in sorted(target.rglob("*.py")):
        if BEGIN in path.read_text():
            text = strip_solutions(path)
            compile(text, str(path), "exec")      # the student version must still import
            path.write_text(text)
    readme.write_text(HANDOUT_README.format(assignments=describe(), specifications=specification_list()))
    return target


def describe():
    """The table `list` prints: each assignment, its points and its functions."""
    from .grade import CHECKS                 # the points live with the checks
    lines = []
    for key, (title, functions) in ASSIGNMENTS.items():
        points = sum(c.points for c in CHECKS if c.assignment == key)
        checks = sum(1 for c in CHECKS if c.assignment == key)
        extra = "optional: " if key in OPTIONAL else ""
        lines.append(f"{key}  {title}  ({extra}{points} points, {checks} checks)")
        lines += [f"      minifcn/{f.split(':')[0].replace('.', '/')}.py  {f.split(':')[1]}" for f in functions]
    return "\n".join(lines)


HANDOUT_README = """# minifcn: the assignments

`minifcn/` is a small fully convolutional network (FCN) engine in NumPy, with some of its functions left for
you to write. Each of them raises `NotImplementedError("...: write this (see the docstring)")` until you do.

## What to write

```
{assignments}
```

Write the body where the `NotImplementedError` is. The function's docstring is the specification (every
shape, the output-size formula); keep the signature, and the lines above the `raise` (input checks, and in
a backward the line that unpacks the cache: it fixes what your forward must keep).

Put this folder first on the path so that `import minifcn` finds your copy: `export PYTHONPATH=$PWD`.

## Check your work

- The loop versions are the specification: {specifications}. Compare your functions with them
  on small random inputs, with every option the docstring allows (strides, pads, dilation, no bias...).
  Do not call them from your code: while it is graded they raise an error.
- `minifcn.gradcheck.gradcheck(forward, backward, inputs, ...)` compares a backward with central differences,
  and `python -m minifcn.gradcheck` runs it on every op.

## How it is graded

Each assignment is graded on its own, in its own process with a time limit, with the other assignments'
functions taken from a reference solution (a bug in one costs that assignment's points only). Each is worth
a number of checks: comparisons with the loop versions and a reference solution, gradient checks of your
backward against your forward, adjointness (`<im2col(x), c> = <x, col2im(c)>`), properties (ignored pixels get
a zero gradient, no NaN), and hidden cases: random shapes, kernels, strides, pads, dilations and dtypes,
shown only after the due date. So handle every case the docstring describes, return arrays of the dtype it
says, and never change an argument in place (`x -= m` changes the caller's array: write `x = x - m`): a
function that does fails its check. An endless loop or a crash costs the checks not yet run in that assignment.
An optional assignment's points come on top of the total.

Submit the `minifcn/` folder (the whole package).
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minifcn.assignments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the assignments and the functions each asks for")
    mk = sub.add_parser("make", help="write the student version to OUT/minifcn/, and OUT/README.md")
    mk.add_argument("out", help="folder to write into (the package goes to OUT/minifcn/)")
    mk.add_argument("--force", action="store_true", help="overwrite OUT/minifcn/ and OUT/README.md if they exist")
    args = parser.parse_args(argv)
    if args.command == "list":
        check_markers()                     # a mistake in the markers: one 'error:' line from cli.run, status 2
        print(describe())
        return 0
    target = make(args.out, args.force)
    print(f"student version written to {target}, instructions to {Path(args.out) / 'README.md'}")
    print(f"hand out {target.parent} (minifcn/ and README.md; students put it on PYTHONPATH); grade with "
          f"python -m minifcn.grade {args.out}")
    return 0


if __name__ == "__main__":
    from . import cli
    raise SystemExit(cli.run(main, "python -m minifcn.assignments"))     # `list | head` ends quietly
