"""Course assignments generated from the code and graded by the project's own tests.

The solution IS the project. A handout is a copy of the repository in which the functions an assignment names keep
their signature and docstring and lose their body (it becomes `raise NotImplementedError(...)`); the tests that the
manifest lists grade the student's copy. Nothing is kept in a second place that could drift from the code.

    python -m nanor1.course list                          # the assignments
    python -m nanor1.course make mla --out ../mla        # a student's handout: the repo with MLA's parts blanked
    python -m nanor1.course grade mla --repo ../mla      # run the graded tests there, print the score table
    python -m nanor1.course grade mla --hidden extra.py  # ... plus an instructor's hidden tests (1 point each)
    python -m nanor1.course check                        # instructors: is every grader exact? (one suite run)

The manifest is docs/assignments/assignments.toml. Each assignment lists `blank` (FILE:Qualified.name), `tests`
(pytest node ids -> points: the parts, through small fixtures) and `end_to_end` (node ids or whole test files,
0 points: the pipeline tests that also run through the blanked code, reported by `grade --all`).

Exactness (`check`, and tests/test_course.py in CI): a "probe" copy puts a one-line recorder at the top of every
listed function instead of blanking it, the whole suite runs once there, and the tests that reached an assignment's
functions must be exactly its `tests` + `end_to_end`. A test that never reaches a blanked function runs the same
code in the handout as in the project, so the handout fails exactly its graded tests and passes every other test.
"""
import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join("docs", "assignments", "assignments.toml")
SKIP = {".git", "out", "__pycache__", ".pytest_cache", "build", "dist"}  # never copied into a handout
PROBE_ENV = "NANOR1_PROBE"


def load_manifest(repo=ROOT):
    """-> {name: {title, handout, blank: [(file, qualname)], tests: {node id: points}, end_to_end: [...], ...}}"""
    path = os.path.join(repo, MANIFEST)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    out = {}
    for name, a in raw.items():
        for key in ("title", "handout", "blank", "tests"):
            if key not in a:
                raise ValueError(f"{path}: assignment {name!r} has no {key!r}")
        blank = []
        for spec in a["blank"]:
            if ":" not in spec:
                raise ValueError(f"{path}: assignment {name!r}: blank entry {spec!r} is not FILE:Qualified.name")
            blank.append(tuple(spec.split(":", 1)))
        out[name] = dict(a, blank=blank, end_to_end=list(a.get("end_to_end", [])))
    return out


def find_function(tree, qualname, where=""):
    """The FunctionDef of 'f' or 'Class.method' in a module's AST."""
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise ValueError(f"{where}: no function {qualname!r}")
        body = node.body
    if not isinstance(node, ast.FunctionDef):
        raise ValueError(f"{where}: {qualname!r} is a class, not a function")
    return node


def rewrite(source, qualnames, body_for, where=""):
    """Replace (mode 'blank') or prefix (mode 'probe') each listed function's body. body_for(qualname, indent,
    old_lines) -> new lines. The docstring and every line outside the bodies stay byte for byte."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    spans = []
    for q in qualnames:
        fn = find_function(tree, q, where)
        body = fn.body
        has_doc = ast.get_docstring(fn, clean=False) is not None
        if has_doc and len(body) == 1:
            raise ValueError(f"{where}: {q} has only a docstring")
        first = body[1] if has_doc else body[0]
        start = first.lineno - 1  # 0-based first line of the code after the docstring
        if first.col_offset != len(lines[start]) - len(lines[start].lstrip()):
            raise ValueError(f"{where}: {q}: put the body on its own lines to blank it")
        indent = lines[start][:first.col_offset]
        spans.append((start, fn.end_lineno, body_for(q, indent, lines[start:fn.end_lineno])))
    for start, end, new in sorted(spans, reverse=True):
        lines[start:end] = new
    return "".join(lines)


def blank_body(name):
    def body_for(qualname, indent, old):
        return [f'{indent}raise NotImplementedError("assignment {name}: write {qualname} (see ASSIGNMENT.md)")\n']
    return body_for


def probe_body(name):
    def body_for(qualname, indent, old):
        return [f'{indent}__import__("nanor1.course", fromlist=["probe"]).probe("{name}")\n'] + old
    return body_for


_seen = set()
_fixtures = []  # the fixtures being set up right now (innermost last): the probe run's pytest plugin keeps it


def probe(name):
    """Called first thing by a probed function: note (assignment, running test) once per process. Inside a
    fixture's setup the fixture is noted instead (a session fixture is set up once, for its first test, and
    its error would reach every test that uses it)."""
    path, test = os.environ.get(PROBE_ENV), os.environ.get("PYTEST_CURRENT_TEST")
    if not path or not test:
        return
    key = (name, f"fixture:{_fixtures[-1]}" if _fixtures else test.rsplit(" (", 1)[0])
    if key not in _seen:
        _seen.add(key)
        with open(path, "a") as f:
            f.write("\t".join(key) + "\n")


try:  # the probe run loads this module as a pytest plugin (-p nanor1.course); nothing else uses these hooks
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(fixturedef, request):
        _fixtures.append(fixturedef.argname)
        try:
            yield
        finally:
            _fixtures.pop()

    def pytest_runtest_setup(item):
        if os.environ.get(PROBE_ENV):
            with open(os.environ[PROBE_ENV], "a") as f:
                f.write(f"uses\t{item.nodeid}\t{' '.join(item.fixturenames)}\n")

    def pytest_runtest_logreport(report):
        if os.environ.get(RESULTS_ENV):
            with open(os.environ[RESULTS_ENV], "a") as f:
                f.write(f"{report.nodeid}\t{report.when}\t{report.outcome}\n")
except ImportError:
    pass


def copy_repo(repo, out):
    if os.path.exists(out) and os.listdir(out):
        raise SystemExit(f"error: --out {out} exists and is not empty")
    shutil.copytree(repo, out, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])


def make(name, out, repo=ROOT, mode="blank", names=None):
    """Copy repo to out with the assignment's functions blanked (mode 'blank') or probed (mode 'probe'; names:
    several assignments at once). Returns the files changed."""
    manifest = load_manifest(repo)
    names = names or [name]
    for n in names:
        if n not in manifest:
            raise SystemExit(f"error: no assignment {n!r} in {MANIFEST} (have: {', '.join(manifest)})")
    copy_repo(repo, out)
    by_file = {}
    for n in names:
        for file, q in manifest[n]["blank"]:
            by_file.setdefault(file, []).append((n, q))
    for file, items in by_file.items():
        path = os.path.join(out, file)
        with open(path) as f:
            source = f.read()
        for n in {n for n, _ in items}:  # one rewrite per assignment (each its own message/probe)
            body = blank_body(n) if mode == "blank" else probe_body(n)
            source = rewrite(source, [q for m, q in items if m == n], body, where=file)
        with open(path, "w") as f:
            f.write(source)
    if mode == "blank":
        with open(os.path.join(repo, os.path.dirname(MANIFEST), manifest[name]["handout"])) as f:
            handout = f.read()
        with open(os.path.join(out, "ASSIGNMENT.md"), "w") as f:
            f.write(handout.rstrip() + "\n\n" + grading_section(name, manifest[name]))
    return sorted(by_file)


def grading_section(name, a):
    """The handout's grading part, written from the manifest (so it cannot drift from what grade runs)."""
    lines = ["## How it is graded", "",
             "Work in this folder with `pip install -e \".[test,plot]\"` run here (or always `python -m pytest`, "
             "which puts this folder first on the path: a bare `pytest` may import another installed nanor1).", "",
             f"`python -m nanor1.course grade {name}` runs these tests in this copy and prints the score "
             f"({sum(a['tests'].values())} points):", "", "| test | points |", "|---|---|"]
    lines += [f"| `{t}` | {p} |" for t, p in a["tests"].items()]
    lines += ["", "The functions you write: " + ", ".join(f"`{q}` ({f})" for f, q in a["blank"]) + ". Their "
              "signatures and docstrings are the specification; every other line of the repository is the "
              "reference solution of the other assignments and stays as it is."]
    if a["end_to_end"]:
        lines += ["", f"These pipeline tests also run through your code (0 points; `grade {name} --all` runs them). "
                  "Every other test of the repository passes before you start, so `python -m pytest` shows exactly "
                  "what is left:", ""] + [f"- `{e}`" for e in a["end_to_end"]]
    if a.get("experiment"):
        lines += ["", f"Experiment command: `{a['experiment']}`"]
    return "\n".join(lines) + "\n"


def matches(nodeid, entry):
    """A manifest entry names a file, a test function (all its parametrisations) or one node id."""
    return nodeid == entry or nodeid.startswith(entry + "[") or nodeid.startswith(entry + "::")


RESULTS_ENV = "NANOR1_RESULTS"


def run_pytest(repo, args, env=None, timeout=None):
    """Run pytest in repo (its own nanor1 first on the path); -> ({node id: PASSED|FAILED|ERROR|SKIPPED}, output).
    Outcomes come from this module loaded as a pytest plugin (node ids may hold spaces: no parsing of the log)."""
    with tempfile.TemporaryDirectory() as tmp:
        results_path = os.path.join(tmp, "results.tsv")
        env = dict(os.environ, **(env or {}), **{RESULTS_ENV: results_path})
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "pytest", "-p", "nanor1.course", "-p", "no:cacheprovider", "--tb=short", *args]
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        results = {}
        if os.path.exists(results_path):
            for line in open(results_path):
                nodeid, when, outcome = line.rstrip("\n").rsplit("\t", 2)
                if outcome == "failed":
                    results[nodeid] = "FAILED" if when == "call" else "ERROR"
                elif outcome == "skipped":
                    results.setdefault(nodeid, "SKIPPED")
                elif when == "call":
                    results.setdefault(nodeid, "PASSED")
    return results, proc.stdout + proc.stderr


def grade(name, repo=ROOT, include_end_to_end=False, hidden=()):
    """Run the assignment's graded tests on the code in repo -> (rows (test, points, earned, outcome), output).
    They run in a scratch copy of repo whose tests/ and nanor1/course.py are this repository's (a submission
    cannot change its own graders); hidden test files join tests/ there, 1 point per test."""
    a = load_manifest(ROOT)[name]
    entries = dict(a["tests"])
    if include_end_to_end:
        entries.update({e: 0 for e in a["end_to_end"]})
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "submission")
        copy_repo(repo, work)
        shutil.rmtree(os.path.join(work, "tests"), ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(work, "tests"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(ROOT, "nanor1", "course.py"), os.path.join(work, "nanor1", "course.py"))
        hidden_entries = []
        for path in hidden:
            dest = os.path.join("tests", "test_hidden_" + os.path.basename(path).removeprefix("test_"))
            shutil.copy(path, os.path.join(work, dest))
            hidden_entries.append(dest)
        results, output = run_pytest(work, list(entries) + hidden_entries)
    rows = []
    for entry, points in entries.items():
        outcomes = [o for nodeid, o in results.items() if matches(nodeid, entry)]
        ok = bool(outcomes) and all(o == "PASSED" for o in outcomes)
        rows.append((entry, points, points if ok else 0, "pass" if ok else (outcomes and "fail" or "not run")))
    for entry in hidden_entries:
        for nodeid, o in results.items():
            if matches(nodeid, entry):
                rows.append(("hidden: " + nodeid.split("::", 1)[1], 1, int(o == "PASSED"), o.lower()))
    return rows, output


def score_table(name, rows):
    a = load_manifest(ROOT)[name]
    width = max(len(r[0]) for r in rows)
    lines = [f"assignment {name}: {a['title']}", f"{'test'.ljust(width)}  points  result"]
    lines += [f"{t.ljust(width)}  {e:>2}/{p:<3}  {o}" for t, p, e, o in rows]
    lines.append(f"{'score'.ljust(width)}  {sum(r[2] for r in rows):>2}/{sum(r[1] for r in rows):<3}")
    return "\n".join(lines)


def reached_by(repo=ROOT, workdir=None, pytest_args=(), timeout=None):
    """Run the whole suite once in a probe copy of repo -> ({assignment: {node ids}}, {node id: outcome})."""
    manifest = load_manifest(repo)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        copy = os.path.join(tmp, "probe")
        make(None, copy, repo, mode="probe", names=list(manifest))
        log = os.path.join(tmp, "probe.tsv")
        results, output = run_pytest(copy, list(pytest_args), env={PROBE_ENV: log}, timeout=timeout)
        reached, uses = {n: set() for n in manifest}, {}
        lines = [line.rstrip("\n").split("\t") for line in open(log)] if os.path.exists(log) else []
        for parts in lines:
            if parts[0] == "uses":
                uses[parts[1]] = set(parts[2].split())
        for n, where, *_ in (p for p in lines if p[0] != "uses"):
            if where.startswith("fixture:"):
                reached[n] |= {t for t, fixtures in uses.items() if where[8:] in fixtures}
            else:
                reached[n].add(where)
    return reached, results, output


def graded_ids(assignment, all_ids):
    entries = list(assignment["tests"]) + assignment["end_to_end"]
    return {i for i in all_ids if any(matches(i, e) for e in entries)}


def compact(ids, all_ids):
    """Node ids -> the shortest entries: a whole file when every test in it is there, a test function when all its
    parametrisations are, else the node ids themselves."""
    out = []
    for file in sorted({i.split("::")[0] for i in ids}):
        in_file = {i for i in all_ids if i.startswith(file + "::")}
        mine = {i for i in ids if i.startswith(file + "::")}
        if mine == in_file:
            out.append(file)
            continue
        for fn in sorted({i.split("[")[0] for i in mine}):
            params = {i for i in all_ids if matches(i, fn)}
            out += [fn] if params <= mine else sorted(params & mine)
    return out


def check(repo=ROOT, pytest_args=("--ignore=tests/test_course.py",)):
    """Every assignment's graders exact, and the project scores full marks? -> list of problems (empty when all
    are). The course's own tests are left out of the probe run (they would run it again)."""
    manifest = load_manifest(repo)
    reached, results, output = reached_by(repo, pytest_args=pytest_args)
    if not results:
        return [f"the probe run collected no tests:\n{output[-3000:]}"]
    problems = [f"fails in the project itself: {i}" for i, o in results.items() if o not in ("PASSED", "SKIPPED")]
    for name, a in manifest.items():
        graded = graded_ids(a, results)
        for entry in list(a["tests"]) + a["end_to_end"]:
            if not any(matches(i, entry) for i in results):
                problems.append(f"{name}: {entry} names no test")
        extra, missing = reached[name] - graded, graded - reached[name]
        if extra:
            problems.append(f"{name}: reached but not graded: {compact(extra, results)}")
        if missing:
            problems.append(f"{name}: graded but never reaches a blanked function: {sorted(missing)}")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanor1.course", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the assignments")
    m = sub.add_parser("make", help="write a handout: the repository with the assignment's functions blanked")
    m.add_argument("name")
    m.add_argument("--out", required=True)
    g = sub.add_parser("grade", help="run an assignment's graded tests and print the score")
    g.add_argument("name")
    g.add_argument("--repo", default=ROOT, help="the student's copy (default: this repository)")
    g.add_argument("--all", action="store_true", help="also run the end-to-end tests that use the code (0 points)")
    g.add_argument("--hidden", nargs="*", default=[], help="instructor test files, 1 point per test")
    sub.add_parser("check", help="run the suite once with probes: is every grader exact?")
    args = p.parse_args(argv)
    try:
        manifest = load_manifest(ROOT)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"error: {e}")
    if args.cmd == "list":
        for name, a in manifest.items():
            pts = sum(a["tests"].values())
            print(f"{name:<16} {a['title']}  ({len(a['blank'])} functions, {len(a['tests'])} tests, {pts} points)")
    elif args.cmd == "make":
        files = make(args.name, os.path.abspath(args.out))
        print(f"handout for {args.name!r} in {args.out}: {len(manifest[args.name]['blank'])} functions blanked "
              f"in {', '.join(files)}; read {os.path.join(args.out, 'ASSIGNMENT.md')}")
        print(f"grade it: python -m nanor1.course grade {args.name} --repo {args.out}")
    elif args.cmd == "grade":
        if args.name not in manifest:
            raise SystemExit(f"error: no assignment {args.name!r} (have: {', '.join(manifest)})")
        rows, _ = grade(args.name, os.path.abspath(args.repo), args.all, args.hidden)
        print(score_table(args.name, rows))
    elif args.cmd == "check":
        problems = check()
        print("\n".join(problems) if problems else f"all {len(manifest)} assignments' graders are exact")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
