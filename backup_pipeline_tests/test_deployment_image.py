"""The container image's Python setup, replayed in a fresh virtual environment.

Docker cannot run here, so this test reads the Dockerfile and performs its COPY steps (into
a scratch build context) and its ``pip install`` RUN steps (with the venv's python, the
ARG defaults substituted) exactly as written, then imports the code location and builds the
k8s executor in that venv. Apt steps (PGDG client, tini) and the user are not replayed.
Done once per session; bounded by a timeout. pip skips byte-compilation (``PIP_WITHOUT_BYTECODE``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900
# pip's --no-compile through the environment (pip maps PIP_NO_COMPILE=0 to compile=False: the
# value of a negative option is inverted). Byte-compiling the ~8 000 modules of the install was
# ~40 % of pip's CPU time here (52 s → 30 s); what the test proves — the Dockerfile's pip step
# resolves and installs, and the installed code location loads — does not depend on .pyc files
# (the probe compiles what it imports), and the command line stays the Dockerfile's.
PIP_WITHOUT_BYTECODE = {"PIP_NO_COMPILE": "0"}


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", dockerfile)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_python_setup_in_a_fresh_venv(tmp_path: Path) -> None:
    instructions = _instructions((ROOT / "Dockerfile").read_text())
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    context = tmp_path / "app"
    context.mkdir()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"

    pip_steps = 0
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--") and "deploy/" not in rest:
            *sources, dest = shlex.split(rest)
            for source in sources:
                src = ROOT / source
                target = context / dest if dest not in ("./", ".") else context
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, target / src.name)
        elif keyword == "RUN" and "pip install" in rest:
            command = rest
            for name, value in args.items():
                command = command.replace("${" + name + "}", value)
            assert command.startswith("python -m pip install"), command
            command = f"{shlex.quote(str(python))}{command.removeprefix('python')}"
            result = subprocess.run(
                command,
                shell=True,
                cwd=context,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | PIP_WITHOUT_BYTECODE,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            pip_steps += 1
    assert pip_steps == 1, "the Dockerfile should install the project in exactly one pip step"

    # The installed code location loads (not the working tree's: run from an empty directory),
    # with each executor setting, including the optional integrations from the 'deploy' extra.
    probe = """
import dagster as dg, backup_pipeline, sys
assert "/site-packages/" in backup_pipeline.__file__, backup_pipeline.__file__
from backup_pipeline.executors import executor_for
from backup_pipeline.settings import load_settings
for kind in ("in_process", "multiprocess", "k8s", "celery", "docker"):
    executor = executor_for(load_settings({"BACKUP_PIPELINE_EXECUTOR": kind}))
    assert executor.name == kind, (kind, executor.name)
import backup_pipeline.definitions as d
dg.Definitions.validate_loadable(d.defs)
print("jobs:", sorted(job.name for job in d.defs.resolve_all_job_defs()))
"""
    empty = tmp_path / "run"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_PIPELINE_")}
    env["BACKUP_PIPELINE_STATE_DIR"] = str(tmp_path / "state")
    result = subprocess.run(
        [str(python), "-c", probe], cwd=empty, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "jobs:" in result.stdout
