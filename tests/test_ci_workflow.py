"""docs/github-actions.yml works as written: its run: steps, in order, in a fresh clone, for an unchanged and a damaged model.

Only the `uses: actions/*` steps are skipped (checkout, setup-python, upload-artifact): the fresh
clone stands for checkout, this interpreter for setup-python. The job's zig cache is the
project's own, warm from its other C tests (a runner's starts empty). `sudo` is the runner's; as
root here it runs the command as is.

To record examples/fashion_mnist/ci-baseline.json as the workflow's manual update_baseline run
does: `.venv/bin/python tests/test_ci_workflow.py --update-baseline`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "docs" / "github-actions.yml"
MODEL = "examples/fashion_mnist/mobilenet_v2_tiny.onnx"
BASELINE = "examples/fashion_mnist/ci-baseline.json"
STEP_TIMEOUT = 1200


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def _fresh_clone(work: Path) -> Path:
    """This working tree (tracked and new files, as they are now) as the main branch of a repo
    whose origin is a bare copy, so `origin/main` and a push work as on a runner."""
    repo = work / "repo"
    repo.mkdir(parents=True)
    files = _git(ROOT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fresh")
    _git(work, "clone", "-q", "--bare", str(repo), str(work / "origin.git"))
    _git(repo, "remote", "add", "origin", str(work / "origin.git"))
    _git(repo, "fetch", "-q", "origin")
    return repo


def _expression(text: str, context: dict) -> object:
    """A GitHub Actions expression of the few forms the workflow uses; anything else fails the test."""
    names = {
        "github.workspace": repr(context["workspace"]), "github.base_ref": "''", "runner.os": "'Linux'",
        "inputs.update_baseline": repr(context["update_baseline"]),
        "steps.gate.outputs.status": repr(context.get("gate_status", "")),
    }
    python = text.strip()
    for name, value in names.items():
        python = python.replace(name, value)
    python = python.replace("always()", "True").replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"!(?!=)", " not ", python)
    assert re.fullmatch(r"[\w\s'()!=.\-/]*", python), f"workflow expression not understood: {text!r}"
    return eval(python, {"__builtins__": {}}, {"True": True, "False": False})  # noqa: S307 - our own file


def _substitute(text: str, context: dict) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(_expression(m.group(1), context)), text)


def run_workflow(work: Path, model: onnx.ModelProto | None = None, update_baseline: bool = False) -> dict:
    """Run the gate job's run: steps in a fresh clone. Returns {"gate": exit status, "failed": step or None, "repo": path}."""
    repo = _fresh_clone(work)
    if model is not None:  # the pull request changes the model; origin/main keeps the committed one
        onnx.save(model, repo / MODEL)
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
    context = {"workspace": str(repo), "update_baseline": update_baseline}
    shims = work / "shims"
    shims.mkdir()
    (shims / "sudo").write_text('#!/bin/sh\nexec env "$@"\n')  # sudo VAR=value cmd, as root
    (shims / "sudo").chmod(0o755)
    (shims / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{shims}:{env.get('PATH', '/usr/bin:/bin')}"
    env |= {key: _substitute(str(value), context) for key, value in job["env"].items()}
    env |= {"GITHUB_WORKSPACE": str(repo), "GITHUB_OUTPUT": str(work / "output"),
            "GITHUB_STEP_SUMMARY": str(work / "summary.md"), "CI": "true"}
    # The job's zig cache: the project's own, warm from its other C tests; every venv's zig reads
    # the same lib folder (targets.c_build.shared_zig_lib), so the builds in it are reused.
    zig_cache = ROOT / ".cache" / "zig"
    zig_cache.mkdir(parents=True, exist_ok=True)
    (repo / ".cache").mkdir(exist_ok=True)
    (repo / ".cache" / "zig").symlink_to(zig_cache)
    log = []
    failed = None
    for step in job["steps"]:
        if "uses" in step:
            assert step["uses"].startswith("actions/"), f"a step needs {step['uses']}, which the test cannot stand in for"
            continue
        condition = step.get("if", "success()")
        condition = condition[3:-2] if condition.startswith("${{") else condition
        if condition.strip() != "success()" and not _expression(condition, context):
            continue
        if condition.strip() == "success()" and failed:
            continue
        script = _substitute(step["run"], context)
        started = time.monotonic()
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=STEP_TIMEOUT)
        log.append(f"## {step.get('name')}: exit {done.returncode} after {time.monotonic() - started:.0f} s\n"
                   f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        if step.get("id") == "gate":
            outputs = dict(line.split("=", 1) for line in (work / "output").read_text().splitlines() if "=" in line)
            context["gate_status"] = outputs["status"]
        if done.returncode != 0 and failed is None:
            failed = step.get("name")
    return {"gate": context.get("gate_status"), "failed": failed, "log": "\n".join(log), "repo": repo}


def _damaged_model() -> onnx.ModelProto:
    """The example model with its classifier's weights scrambled: a pull request that breaks it."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(ROOT / MODEL)
    for init in model.graph.initializer:
        if init.name == "classifier.weight":
            weight = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weight[::-1]), init.name))
    return model


@pytest.mark.zig
@pytest.mark.qemu
@pytest.mark.fashion_mnist
def test_the_github_workflow_runs_as_written(tmp_path):
    """Both cases in one test, one after the other: each runs the workflow's apt-get step, and two
    apt-gets at once fail on its lock (two runners never share one)."""
    for case, model, expected_gate, expected_failed_step in (
            ("unchanged", None, "0", None),
            ("damaged", _damaged_model(), "1", "Fail on regression")):
        work = tmp_path / case
        result = run_workflow(work, model)
        assert result["gate"] == expected_gate, f"{case}:\n{result['log']}"
        assert result["failed"] == expected_failed_step, f"{case}:\n{result['log']}"
        repo = result["repo"]
        for produced in ("build/results.json", "build/gate.json", "build/analysis.json", "build/report.html",
                         "build/summary.md"):
            assert (repo / produced).is_file(), f"{case}: {produced} missing\n{result['log']}"
        names = sorted(p.name for p in (repo / "build" / "candidate").iterdir())
        assert names == [f"mobilenet_v2_tiny-{arch}-int8" for arch in ("aarch64", "loongarch64", "riscv64")]
        summary = (work / "summary.md").read_text()
        assert ("PASS" in summary) == (expected_gate == "0"), f"{case}: {summary[:500]}"


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--update-baseline"]:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as folder:
        outcome = run_workflow(Path(folder), update_baseline=True)
        print(outcome["log"])
        written = outcome["repo"] / BASELINE
        if not written.is_file():
            sys.exit("the workflow wrote no baseline")
        shutil.copy2(written, ROOT / BASELINE)
        print(f"wrote {ROOT / BASELINE}")
