"""The course machinery: handouts blank exactly the listed bodies, each handout fails its graded tests, graders are
exact (the probe run), and grade/hidden tests score as they should."""
import ast
import os
import textwrap

import pytest

from nanor1 import course

ROOT = course.ROOT


def functions(tree, prefix=""):
    """{qualified name: FunctionDef} of a module (methods as Class.method)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[prefix + node.name] = node
        elif isinstance(node, ast.ClassDef):
            out.update(functions(node, prefix + node.name + "."))
    return out


def strip_body(fn):
    """The function with its body reduced to the docstring (what must survive blanking)."""
    fn = ast.parse(ast.unparse(fn)).body[0]
    doc = ast.get_docstring(fn, clean=False)
    fn.body = [ast.Expr(ast.Constant(doc))] if doc is not None else []
    return ast.dump(fn)


@pytest.mark.parametrize("name", list(course.load_manifest()))
def test_a_handout_changes_only_the_listed_bodies(name, tmp_path):
    manifest = course.load_manifest()
    out = tmp_path / "handout"
    changed = course.make(name, str(out))
    listed = {}
    for file, q in manifest[name]["blank"]:
        listed.setdefault(file, set()).add(q)
    assert set(changed) == set(listed)
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in course.SKIP and not d.endswith(".egg-info")]
        for f in filenames:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
            original, copy = open(os.path.join(ROOT, rel)).read(), open(out / rel).read()
            if rel not in listed:
                assert copy == original, rel
                continue
            before, after = functions(ast.parse(original)), functions(ast.parse(copy))
            for q, fn in before.items():
                if q in listed[rel]:  # signature and docstring kept, the body is one raise naming the assignment
                    assert strip_body(after[q]) == strip_body(fn)
                    code = [s for s in after[q].body
                            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                    assert len(code) == 1 and isinstance(code[0], ast.Raise)
                    assert f"assignment {name}: write {q}" in ast.unparse(code[0])
                else:
                    assert ast.dump(after[q]) == ast.dump(fn), f"{rel}: {q} changed"
    handout = (out / "ASSIGNMENT.md").read_text()
    assert "## How it is graded" in handout and all(t in handout for t in manifest[name]["tests"])


def test_every_handout_fails_each_of_its_graded_tests(tmp_path):
    """In each handout, every test that carries points fails, and fails on the assignment's NotImplementedError."""
    for name, a in course.load_manifest().items():
        out = str(tmp_path / name)
        course.make(name, out)
        results, output = course.run_pytest(out, list(a["tests"]))
        assert results, output[-2000:]
        for entry in a["tests"]:
            outcomes = [o for i, o in results.items() if course.matches(i, entry)]
            assert outcomes and all(o in ("FAILED", "ERROR") for o in outcomes), (name, entry, outcomes)
        assert f"assignment {name}: write" in output


def test_grade_scores_the_project_full_and_a_handout_zero_with_hidden_tests(tmp_path):
    hidden = tmp_path / "test_extra.py"
    hidden.write_text(textwrap.dedent("""
        from nanor1.grpo import group_advantages
        import torch

        def test_hidden_advantages_sum_to_zero():
            assert abs(group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]])).sum()) < 1e-6

        def test_hidden_that_fails():
            assert False
    """))
    rows, _ = course.grade("grpo", ROOT, hidden=[str(hidden)])
    scored = {r[0]: r for r in rows}
    assert all(r[2] == r[1] for r in rows if not r[0].startswith("hidden")), rows
    assert scored["hidden: test_hidden_advantages_sum_to_zero"][2] == 1
    assert scored["hidden: test_hidden_that_fails"][2] == 0
    assert not [f for f in os.listdir(os.path.join(ROOT, "tests")) if "hidden" in f]  # graded in a scratch copy
    out = str(tmp_path / "grpo")
    course.make("grpo", out)
    (tmp_path / "grpo" / "tests" / "test_grpo_math.py").write_text("def test_advantages_by_hand():\n    pass\n")
    rows, _ = course.grade("grpo", out)  # the submission's own (edited) tests do not count: ours run
    assert sum(r[2] for r in rows) == 0 and sum(r[1] for r in rows) > 0
    table = course.score_table("grpo", rows)
    assert table.splitlines()[-1].split()[-1] == f"0/{sum(r[1] for r in rows)}"


def test_blanking_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no function 'nope'"):
        course.rewrite("def f():\n    return 1\n", ["nope"], course.blank_body("x"), where="m.py")
    with pytest.raises(SystemExit, match="no assignment 'nope'"):
        course.make("nope", str(tmp_path / "x"))


def test_graders_are_exact_and_the_project_scores_full_marks():
    """One run of the whole suite in a probe copy: the tests that reach an assignment's functions are exactly its
    graded tests (`tests` + `end_to_end`), and every test passes there. A test that reaches no blanked function runs
    the same code in the handout, so each handout fails exactly its graded tests and passes every other one."""
    problems = course.check()
    assert not problems, "\n".join(problems)
