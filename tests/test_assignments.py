"""Course assignments: the reference scores full marks, the student version imports and scores zero, and a
planted bug loses exactly the points of the checks it breaks (and nothing in any other assignment)."""
import ast
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minifcn import assignments, cli, grade
from minifcn.gradcheck import gradcheck
from minifcn.ops import conv2d_backward, conv2d_forward

ROOT = Path(__file__).resolve().parents[1]
TOTAL = sum(c.points for c in grade.CHECKS)
OPTIONAL = sum(c.points for c in grade.CHECKS if c.assignment in assignments.OPTIONAL)


def points(assignment):
    return sum(c.points for c in grade.CHECKS if c.assignment == assignment)


def solved_copy(tmp_path, file, old, new, *more):
    """A copy of the reference package (a student who solved everything) with one line of `file` changed
    (and more (file, old, new) edits after it)."""
    shutil.copytree(assignments.PACKAGE, tmp_path / "minifcn", ignore=shutil.ignore_patterns("__pycache__"))
    for file, old, new in [(file, old, new), *more]:
        path = tmp_path / "minifcn" / file
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} must occur once in {file}"
        path.write_text(text.replace(old, new))
    return tmp_path


def failed(rows):
    return {r["name"].split()[0] for r in rows if r["score"] < r["max_score"]}


def test_markers_and_assignment_list_agree():
    assignments.check_markers()
    assert set(c.assignment for c in grade.CHECKS) == set(assignments.ASSIGNMENTS)
    assert all(points(key) >= 6 for key in assignments.ASSIGNMENTS)


def test_reference_scores_full_marks_and_writes_gradescope_json(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "minifcn.grade", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert OPTIONAL > 0 and f"Total {TOTAL} / {TOTAL - OPTIONAL} (+{OPTIONAL} optional)" in proc.stdout
    results = json.loads(out.read_text())
    assert results["score"] == TOTAL and len(results["tests"]) == len(grade.CHECKS)
    assert results["output"] == f"Total {TOTAL} / {TOTAL - OPTIONAL} (+{OPTIONAL} optional)"
    for test in results["tests"]:
        assert set(test) == {"name", "score", "max_score", "output", "visibility"}
        assert test["score"] == test["max_score"] > 0, test
        assert test["visibility"] in ("visible", "after_due_date")


def test_student_version_imports_keeps_the_specification_and_scores_zero(tmp_path):
    target = assignments.make(tmp_path)
    assert not (target / "grade.py").exists() and not (target / "assignments.py").exists()
    readme = (tmp_path / "README.md").read_text()          # the students' instructions
    assert all(f"{key}  " in readme for key in assignments.ASSIGNMENTS) and "NotImplementedError" in readme
    assert "`im2col_naive` and `col2im_naive` in `minifcn/im2col.py`, `conv2d_naive` and `conv_transpose2d_naive` " \
           "in `minifcn/ops/conv.py`" in readme and "_patch_entries" not in readme    # the loop specifications
    assert not (target / "fast.py").exists()             # the layers must run the student's ops
    with pytest.raises(FileExistsError):
        assignments.make(tmp_path)
    for path in target.rglob("*.py"):
        assert assignments.BEGIN not in path.read_text(), path
    # every docstring (the specification) and signature is still there, in every file an assignment asks for
    files = {f.split(":")[0].replace(".", "/") + ".py" for _, functions in assignments.ASSIGNMENTS.values()
             for f in functions}
    assert {"im2col.py", "ops/conv.py", "ops/loss.py", "models/fcn.py"} <= files
    for module in sorted(files):
        ref, mine = (ast.parse((root / module).read_text()) for root in (assignments.PACKAGE, target))
        defs = [{n.name: (ast.get_docstring(n), ast.dump(n.args)) for n in ast.walk(tree)
                 if isinstance(n, ast.FunctionDef)} for tree in (ref, mine)]
        assert defs[0] == defs[1], module
    # it imports on its own (the student's package, not the reference)
    code = ("import minifcn, minifcn.models, minifcn.ops, minifcn.layers, minifcn.train; "
            "assert not minifcn.layers.use_fast(); print(minifcn.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == (target / "__init__.py").resolve()
    jobs = subprocess.run([sys.executable, "-m", "minifcn"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)}).stdout
    assert "minifcn.train" in jobs and "minifcn.grade" not in jobs and "minifcn.assignments" not in jobs
    rows = grade.grade(tmp_path)
    assert len(rows) == len(grade.CHECKS) and sum(r["score"] for r in rows) == 0
    assert all("NotImplementedError" in r["output"] for r in rows), [r["output"] for r in rows]


def test_the_existing_checks_keep_their_positions():
    """Each check's random (hidden) cases are drawn from its position in grade.CHECKS: a new assignment's checks
    go after all of these, or the hidden cases of every check after the insertion change (mid-term, a regrade
    would then draw other cases than the first grading). Extend this list; never reorder it."""
    counts = {"A1": 6, "A2": 7, "A3": 9, "A4": 7, "A5": 3}
    pinned = [f"{key}.{i}" for key, n in counts.items() for i in range(1, n + 1)]
    assert [c.id for c in grade.CHECKS[:len(pinned)]] == pinned


def test_a_check_of_an_unlisted_assignment_is_refused(monkeypatch):
    # a typo ("a6") or a forgotten ASSIGNMENTS entry: the check would be registered and never run
    monkeypatch.setattr(grade, "CHECKS", list(grade.CHECKS))
    before = len(grade.CHECKS)
    with pytest.raises(ValueError, match="assignment 'a6' is not in ASSIGNMENTS"):
        grade.check("a6", "max_pool2d_forward equals max_pool2d_naive", 2)
    assert len(grade.CHECKS) == before


def test_an_assignment_without_checks_is_reported_by_list_and_make(tmp_path, monkeypatch, capsys):
    # listed and marked but with no check: it would be handed out, shown as 0 points, and never graded
    monkeypatch.setattr(grade, "CHECKS", [c for c in grade.CHECKS if c.assignment != "A4"])
    with pytest.raises(ValueError, match=r"A4 in ASSIGNMENTS but no check in grade.py"):
        assignments.check_markers()
    prog = "python -m minifcn.assignments"
    assert cli.run(lambda: assignments.main(["list"]), prog) == 2           # as `python -m` runs it
    assert cli.run(lambda: assignments.main(["make", str(tmp_path)]), prog) == 2
    err = capsys.readouterr().err
    assert err.count(f"{prog}: error: A4 in ASSIGNMENTS but no check") == 2 and "Traceback" not in err
    assert not (tmp_path / "minifcn").exists()


def test_the_handout_names_every_loop_specification(tmp_path, monkeypatch):
    # one list (assignments.SPECIFICATIONS) both makes a specification raise while graded and names it to students
    assert grade.SPECIFICATIONS is assignments.SPECIFICATIONS
    pooling = [f for f in assignments.SPECIFICATIONS if not f.startswith("ops.pool:")] + ["ops.pool:max_pool2d_naive"]
    monkeypatch.setattr(assignments, "SPECIFICATIONS", pooling)
    assignments.make(tmp_path)
    assert ", `max_pool2d_naive` in `minifcn/ops/pool.py`. Compare" in (tmp_path / "README.md").read_text()


def test_planted_bug_transposed_dW_loses_exactly_its_checks(tmp_path):
    solved_copy(tmp_path, "ops/conv.py", "dW = _dW_sum(dout2, cols).reshape(W.shape)",
                "dW = _dW_sum(dout2, cols).reshape(W.shape).transpose(0, 1, 3, 2)")
    rows = grade.grade(tmp_path, only=["A2", "A3"])      # A3 uses the reference's conv2d: untouched
    assert failed(rows) == {"A2.5", "A2.7"}             # the dW gradient check and the hidden backward cases
    assert sum(r["score"] for r in rows) == points("A2") + points("A3") - 3


NOT_RUN = "not run: an earlier check of this assignment stopped the process"


def test_a_crash_costs_only_the_checks_it_stops(tmp_path):
    # the process exits (code 0, no message) in bilinear_kernel: A3's earlier checks keep their points
    solved_copy(tmp_path, "ops/conv.py", "    factor = (k + 1) // 2\n", "    factor = (k + 1) // 2\n    os._exit(0)\n")
    path = tmp_path / "minifcn" / "ops" / "conv.py"
    path.write_text("import os\n" + path.read_text())
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A3"])}
    assert failed(rows.values()) == {"A3.6", "A3.7", "A3.8", "A3.9"}
    assert rows["A3.6"]["output"] == "did not finish: the process exited (code 0)"
    assert all(rows[c]["output"] == NOT_RUN for c in ("A3.7", "A3.8", "A3.9"))


def test_an_interrupt_in_a_hidden_check_shows_no_traceback(tmp_path):
    # KeyboardInterrupt escapes the checks: its traceback (grade.py lines, the hidden case) must show nowhere
    solved_copy(tmp_path, "ops/conv.py", "    factor = (k + 1) // 2\n",
                "    factor = (k + 1) // 2\n    if k > 4:\n        raise KeyboardInterrupt\n")
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A3"])}
    assert failed(rows.values()) == {"A3.7", "A3.8", "A3.9"}               # A3.6 (k = 3 and 4) passes
    assert rows["A3.7"]["output"] == "did not finish: the process was stopped by signal 2 (Interrupt)"   # no stderr
    assert all(rows[c]["output"] == NOT_RUN for c in ("A3.8", "A3.9"))


def test_an_endless_print_loop_is_stopped_by_the_time_limit_and_costs_no_memory(tmp_path):
    solved_copy(tmp_path, "ops/loss.py", "    shifted = scores", "    while True:\n        print('x' * 100000)\n"
                "    shifted = scores",
                ("im2col.py", "    # BEGIN SOLUTION\n    if _is_pointwise(KH, KW, sh, sw, ph, pw):\n        return x",
                 "    # BEGIN SOLUTION\n    import sys\n    while True:\n        sys.stderr.write('y' * 100000)\n"
                 "    if _is_pointwise(KH, KW, sh, sw, ph, pw):\n        return x"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss          # KiB (Linux)
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A1", "A4"], timeout=3)}
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000     # the output was not kept
    assert rows["A4.1"]["output"] == "did not finish within 3 s (an endless loop, or much slower code than needed?)"
    assert all(rows[f"A4.{i}"]["output"] == NOT_RUN for i in range(2, 8))
    # printing to stderr without end stops at grade.MAX_FILE bytes, with an error in the check that does it
    assert "OSError: [Errno 27] File too large" in rows["A1.1"]["output"]


def test_a_hidden_check_names_its_case_but_never_its_shapes(tmp_path):
    # a reshape bug whose own message would print the hidden case's shape
    solved_copy(tmp_path, "ops/conv.py", "dW = _dW_sum(dout2, cols).reshape(W.shape)",
                "dW = _dW_sum(dout2, cols).reshape(W.shape[::-1])")
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A2"])}
    hidden = rows["A2.7"]
    assert hidden["score"] == 0 and hidden["visibility"] == "after_due_date"
    case = re.match(r"case 1 of \d+ failed \((\w+)\)", hidden["output"])
    assert case and not re.search(r"\d", hidden["output"][case.end():])     # no shape, no index, no value
    assert re.search(r"\d+, \d+", rows["A2.5"]["output"])                   # a visible check keeps its details


def test_a_package_that_does_not_import_fails_once_not_per_assignment(tmp_path):
    solved_copy(tmp_path, "ops/loss.py", "    shifted = scores", "    shifted = scores")
    path = tmp_path / "minifcn" / "ops" / "loss.py"
    path.write_text(path.read_text() + "\nwhile True:\n    pass\n")           # loops as it is imported
    rows = grade.grade(tmp_path, timeout=3)                  # one time limit in all, not one per assignment
    assert len(rows) == len(grade.CHECKS) and sum(r["score"] for r in rows) == 0
    assert all("did not import within 3 s" in r["output"] for r in rows)


def test_a_broken_im2col_does_not_sink_the_convolutions_marks(tmp_path):
    """Each assignment runs on the reference's functions for the others: A2 uses the reference im2col."""
    solved_copy(tmp_path, "im2col.py", "    return cols.reshape(N, C * KH * KW, OH * OW)",
                "    return -cols.reshape(N, C * KH * KW, OH * OW)")
    rows = grade.grade(tmp_path, only=["A2"])
    assert sum(r["score"] for r in rows) == points("A2"), [r["output"] for r in rows if r["score"] < r["max_score"]]


def test_the_seed_draws_the_hidden_cases(tmp_path, monkeypatch):
    """--seed (a new one each term) must reach every check's random cases; the same seed, the same cases."""
    drawn = grade.Check("Z.1", "Z", "draws a number", 1, lambda s, rng: str(rng.integers(1 << 62)), hidden=True)
    monkeypatch.setattr(grade, "CHECKS", grade.CHECKS + [drawn])

    def draw(seed):
        grade.grade_here(assignments.PACKAGE, "Z", seed, tmp_path / "rows.json")
        return json.loads((tmp_path / "rows.json").read_text())[0]["output"]
    assert draw(1) == draw(1) != draw(2)


def test_nan_never_passes_a_comparison():
    with pytest.raises(AssertionError):
        grade.close("x", np.array([np.nan, 1.0]), np.ones(2))
    with pytest.raises(AssertionError):
        grade.close("x", np.full(2, np.nan), np.ones(2))


def _conv_result(poison):
    rng = np.random.default_rng(0)
    a = dict(x=rng.standard_normal((1, 2, 4, 4)), W=rng.standard_normal((3, 2, 3, 3)), b=rng.standard_normal(3))

    def backward(dout, cache):
        dx, dW, db = conv2d_backward(dout, cache)
        return poison(dx.copy()), dW, db
    return gradcheck(conv2d_forward, backward, a, pad=1)


def test_a_gradient_that_is_all_nan_fails_its_check():
    with pytest.raises(AssertionError, match="NaN or infinite"):
        grade.grad_ok(_conv_result(lambda dx: dx * np.nan), "x")
    assert "agrees" in grade.grad_ok(_conv_result(lambda dx: dx), "x")


def _one_nan(dx):
    dx[0, 0, 1, 1] = np.nan
    return dx


def test_a_gradient_with_one_nan_fails_its_check():
    """gradcheck marks the entries it did not sample NaN; a NaN the backward returns at a sampled one must not
    pass for one of those."""
    with pytest.raises(AssertionError, match=r"gradient of x: NaN or infinite at index \(0, 0, 1, 1\)"):
        grade.grad_ok(_conv_result(_one_nan), "x")


def test_a_package_one_folder_too_deep_is_found_and_none_still_writes_results(tmp_path):
    (tmp_path / "sub" / "handout" / "minifcn").mkdir(parents=True)
    (tmp_path / "sub" / "handout" / "minifcn" / "__init__.py").touch()
    assert grade.find_package(tmp_path / "sub") == tmp_path / "sub" / "handout" / "minifcn"
    out = tmp_path / "results.json"                     # no package at all: Gradescope still gets its JSON
    assert grade.main([str(tmp_path / "sub" / "handout" / "minifcn" / "empty"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["score"] == 0 and len(results["tests"]) == len(grade.CHECKS)
    assert "expected" in results["output"] and "minifcn/__init__.py" in results["output"]


def test_a_function_that_changes_its_input_in_place_is_told_so(tmp_path):
    # the reference's answer comes from the same array afterwards: the wrong message would blame the gradient
    solved_copy(tmp_path, "ops/loss.py", "    shifted = scores - scores.max(axis=1, keepdims=True)",
                "    scores -= scores.max(axis=1, keepdims=True)\n    shifted = scores")
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A4"])}
    assert rows["A4.1"]["score"] == 0
    assert rows["A4.1"]["output"].startswith("AssertionError: softmax_cross_entropy changed its argument scores in "
                                             "place: work on a copy")


def test_calling_the_loop_specification_scores_nothing(tmp_path):
    im2col_starts = "    # BEGIN SOLUTION\n    if _is_pointwise(KH, KW, sh, sw, ph, pw):\n        return x"
    solved_copy(tmp_path, "im2col.py", im2col_starts,
                "    return im2col_naive(x, kernel, stride, pad, dilation)\n" + im2col_starts,
                ("im2col.py", "    cols = cols.reshape(N, C, KH, KW, OH, OW)\n",
                 "    return col2im_naive(cols, x_shape, kernel, stride, pad, dilation)\n"))
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A1"])}
    assert sum(r["score"] for r in rows.values()) == 0
    assert "im2col_naive is the loop specification to check your code against" in rows["A1.1"]["output"]
    assert "col2im_naive is the loop specification" in rows["A1.4"]["output"]


def test_what_only_hidden_cases_checked_now_shows_in_a_visible_check(tmp_path):
    conv, loss = "ops/conv.py", "ops/loss.py"
    solved_copy(tmp_path, "im2col.py", "    cols = cols.reshape(N, C, KH, KW, OH, OW)\n",       # col2im: no dilation
                "    cols = cols.reshape(N, C, KH, KW, OH, OW)\n    dh = dw = 1\n",
                (conv, 'cols = im2col(x, (KH, KW), stride, pad, dilation, op="conv2d")       #',      # conv2d: none
                 'cols = im2col(x, (KH, KW), stride, pad, 1, op="conv2d")       #'),
                (conv, "np.outer(ramp, ramp).astype(dtype)", "np.outer(ramp, ramp)"),          # always float64
                (loss, "dscores.astype(scores.dtype, copy=False)", "dscores.astype(np.float64)"),
                (loss, "    # BEGIN SOLUTION\n", "    # BEGIN SOLUTION\n    valid = labels != 255\n"))  # 255 only
    rows = {r["name"].split()[0]: r for r in grade.grade(tmp_path, only=["A1", "A2", "A3", "A4"])}
    for check, says in [("A1.4", "case 3 of 3: AssertionError: col2im(kernel 3, stride 1, pad 2, dilation 2)"),
                        ("A2.2", "case 2 of 2: "), ("A3.6", "bilinear_kernel(4, float32): dtype float64"),
                        ("A4.1", "dscores (float32, reduction='sum') is float64"),
                        ("A4.4", "(float64, ignore_label=-1)")]:
        assert rows[check]["visibility"] == "visible" and rows[check]["score"] == 0
        assert says in rows[check]["output"] and not rows[check]["output"].startswith("CaseFailure"), rows[check]


def test_one_bug_costs_its_own_checks_not_its_neighbours(tmp_path):
    # a wrong db must not fail the dx gradient check; a wrong bilinear_kernel, not bilinear_weight's nor the ramp's
    solved_copy(tmp_path, "ops/conv.py", "# (C_in, C_out, KH, KW)\n    db = dout.sum",
                "# (C_in, C_out, KH, KW)\n    db = 2 * dout.sum",
                ("ops/conv.py", "else factor - 0.5", "else factor - 1"))             # even kernels off centre
    rows = grade.grade(tmp_path, only=["A3"])
    assert failed(rows) == {"A3.5", "A3.6", "A3.7"}


def test_grading_from_inside_the_submission_is_refused(tmp_path):
    # there `python -m minifcn.grade` would import the submission's own minifcn (here a copy with grade.py)
    solved_copy(tmp_path, "ops/loss.py", "    shifted = scores", "    shifted = scores")
    proc = subprocess.run([sys.executable, "-m", "minifcn.grade", ".", "--only", "A4"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "inside the folder being graded" in proc.stderr
    assert "Run the grader from another folder" in proc.stderr


def test_an_unwritable_json_path_is_refused_before_grading(tmp_path, capsys):
    # minutes of grading must not end in a traceback at the last line: the path is checked first
    assert grade.main(["--only", "A1", "--json", str(tmp_path / "missing" / "results.json")]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "does not exist" in err and "Total" not in capsys.readouterr().out


BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # stdout into a pipe, as in a shell


def test_output_into_a_closed_pipe_ends_quietly_and_still_writes_the_json(tmp_path):
    # `python -m minifcn.assignments list | head -1`, `python -m minifcn.grade --json r.json | head`: the reader
    # is gone before the output comes (its end of the pipe closed here at once, so it is sure to be gone)
    def run(*args):
        read, write = os.pipe()
        os.close(read)
        try:
            return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                                  text=True, timeout=300, env=BUFFERED)
        finally:
            os.close(write)
    listed = run("minifcn.assignments", "list")
    assert listed.returncode == 1 and listed.stderr == ""
    graded = run("minifcn.grade", "--only", "A1", "--json", str(tmp_path / "results.json"))
    assert graded.returncode == 1 and graded.stderr == ""
    assert json.loads((tmp_path / "results.json").read_text())["score"] == points("A1")
