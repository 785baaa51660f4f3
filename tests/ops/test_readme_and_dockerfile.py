"""README and Dockerfile agree with the code: commands, settings, paths, ports (the Dockerfile cannot be built here)."""

from __future__ import annotations

import configparser
import dataclasses
import re

from app.settings import Settings
from tests.ops.supervisor_helpers import REPO_ROOT, load_script

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
APP_ROOT_IN_IMAGE = "/app"


def _program_section() -> configparser.SectionProxy:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(REPO_ROOT / "supervisor" / "z-image-turbo.conf")
    return parser["program:z-image-turbo"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in DOCKERFILE.splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def test_quick_start_is_exactly_the_two_commands() -> None:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert block.strip().splitlines() == ["bash scripts/setup_and_start.sh", "bash scripts/test.sh"]
    assert (REPO_ROOT / "scripts" / "setup_and_start.sh").is_file() and (REPO_ROOT / "scripts" / "test.sh").is_file()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci  # CI runs the README's test command


def test_every_variable_the_readme_names_exists() -> None:
    setup_only = set(load_script(REPO_ROOT / "supervisor" / "local_conf.py").SETUP_ONLY_VARIABLES)
    known = {f"ZIMAGE_{f.name.upper()}" for f in dataclasses.fields(Settings)} | {"ZIMAGE_CONFIG"} | setup_only
    named = set(re.findall(r"ZIMAGE_[A-Z0-9_]+[A-Z0-9]", README))
    assert named <= known, f"README names variables nothing reads: {sorted(named - known)}"
    setup_script = (REPO_ROOT / "scripts" / "setup_and_start.sh").read_text()
    for variable in setup_only:
        assert variable in setup_script, variable


def test_operating_commands_match_the_supervisor_files() -> None:
    program = _program_section()
    operating = README.split("## Operating", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", operating, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["supervisorctl status", "supervisorctl restart z-image-turbo", "supervisorctl stop z-image-turbo",
                        "supervisorctl start z-image-turbo", "supervisorctl shutdown",
                        f"tail -f {program['stdout_logfile']}"]
    assert f"http://127.0.0.1:{Settings().port}" in operating
    ctl_wrapper = load_script(REPO_ROOT / "supervisor" / "ctl_wrapper.py")
    assert f"`{ctl_wrapper.default_bin_dir(uid=0)}/supervisorctl` when the" in operating
    assert "`~/.local/bin/supervisorctl` otherwise" in operating
    assert ".venv/bin/supervisorctl -c supervisor/supervisord.conf status" in operating
    start_timeout = load_script(REPO_ROOT / "supervisor" / "health_watchdog.py").WatchdogOptions.start_timeout
    assert f"or {start_timeout:.0f} s after the start without that" in operating
    assert f"stopwaitsecs={program['stopwaitsecs']}" in README and f"startsecs={program['startsecs']}" in README


def test_every_path_the_dockerfile_copies_exists() -> None:
    copies = [args for name, args in _dockerfile_instructions() if name == "COPY"]
    assert copies
    for args in copies:
        if args.startswith("--from="):
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_every_script_the_dockerfile_runs_exists_and_the_venv_matches_the_program_section() -> None:
    for path in set(re.findall(rf"{APP_ROOT_IN_IMAGE}/((?:scripts|supervisor)/[\w./-]+)", DOCKERFILE)):
        if path.rstrip("/") != "supervisor/run":
            assert (REPO_ROOT / path).exists(), path
    assert ("WORKDIR", APP_ROOT_IN_IMAGE) in _dockerfile_instructions()
    # The shipped program runs %(here)s/../.venv/bin/python with %(here)s = /app/supervisor in the image.
    assert _program_section()["command"].startswith("%(here)s/../.venv/bin/python")
    assert f"python3 -m venv {APP_ROOT_IN_IMAGE}/.venv" in DOCKERFILE


def test_port_health_log_and_entrypoint() -> None:
    instructions = dict((name, args) for name, args in _dockerfile_instructions() if name in ("EXPOSE", "CMD"))
    assert instructions["EXPOSE"] == str(Settings().port)
    assert "/health/ready" in next(args for name, args in _dockerfile_instructions() if name == "HEALTHCHECK")
    assert instructions["CMD"] == ('["/app/.venv/bin/supervisord", "-n", "-c", '
                                   '"/app/supervisor/supervisord.conf"]')
    assert f"touch {_program_section()['stdout_logfile']}" in DOCKERFILE
    assert "USER zimage" in DOCKERFILE and "useradd -m -u 1000" in DOCKERFILE
    # Run as root at build time, so the wrapper lands in /usr/local/bin for `docker exec ... supervisorctl`.
    assert "/app/.venv/bin/python /app/supervisor/ctl_wrapper.py install --venv /app/.venv" in DOCKERFILE
    assert DOCKERFILE.index("ctl_wrapper.py install") < DOCKERFILE.index("USER zimage")


def _docker_commands(text: str, prefix: str = "") -> set[str]:
    """`docker build|run ...` commands (continuations joined, whitespace normalized) in lines starting with prefix."""
    lines = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return {" ".join(line.split(" #")[0].split()) for line in joined.splitlines()
            if re.match(r"\s*docker (build|run) ", line)}


def test_readme_docker_commands_are_the_dockerfile_ones() -> None:
    readme = _docker_commands(README)
    header = _docker_commands(DOCKERFILE, prefix="#   ")
    assert readme and readme <= header, f"README docker commands not in the Dockerfile header: {readme - header}"
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE, re.M))
    for arg in re.findall(r"--build-arg (\w+)=", README + DOCKERFILE):
        assert arg in declared, f"--build-arg {arg} but the Dockerfile has no ARG {arg}"
    run = next(command for command in readme if command.startswith("docker run"))
    assert f"-p 127.0.0.1:{Settings().port}:{Settings().port}" in run
    assert f":{APP_ROOT_IN_IMAGE}/weights" in run and f'VOLUME ["{APP_ROOT_IN_IMAGE}/weights"' in DOCKERFILE


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for path in (".venv", "weights", "supervisor/run", ".git"):
        assert path in ignored
    copied = {args.split()[0] for name, args in _dockerfile_instructions() if name == "COPY"
              and not args.startswith("--from=")}
    assert not copied & set(ignored), "the Dockerfile copies something .dockerignore drops"
