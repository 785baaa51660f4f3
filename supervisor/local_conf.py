"""Write this machine's supervisor overrides (venv, log path, ZIMAGE_* settings) next to the shipped config.

supervisor/supervisord.conf includes z-image-turbo.conf and then run/local.conf; a key given again in a
later file wins, section by section. So the shipped program section stays the single source of every
policy (restart, stop signal, rotation, watchdog) and local.conf only restates what differs here:

    python supervisor/local_conf.py local  --python .venv/bin/python --log-file /var/log/z-image-turbo.log
    python supervisor/local_conf.py system --python /abs/.venv/bin/python --log-file /var/log/z-image-turbo.log

`local` writes supervisor/run/local.conf; `system` prints a self-contained program section with absolute
paths for /etc/supervisor/conf.d/ (there %(here)s would mean /etc/supervisor/conf.d).
Settings are the ZIMAGE_* variables of the calling environment, minus the ones only the setup script reads.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from pathlib import Path

from supervisor.datatypes import dict_of_key_value_pairs

SUPERVISOR_DIR = Path(__file__).resolve().parent
PROGRAM_CONF = SUPERVISOR_DIR / "z-image-turbo.conf"
LOCAL_CONF = SUPERVISOR_DIR / "run" / "local.conf"
PROGRAM_SECTION = "program:z-image-turbo"
WATCHDOG_SECTION = "eventlistener:z-image-turbo-watchdog"
# Read by scripts/setup_and_start.sh only; the app never sees them.
SETUP_ONLY_VARIABLES = {"ZIMAGE_VENV", "ZIMAGE_PYTHON", "ZIMAGE_LOG_FILE", "ZIMAGE_DOWNLOAD", "ZIMAGE_DOWNLOAD_LAYOUT",
                        "ZIMAGE_BIN_DIR"}


def read_shipped() -> configparser.RawConfigParser:
    """The shipped program file with %(here)s resolved (to supervisor/) as supervisord would."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(PROGRAM_CONF)
    for section in parser.sections():
        for key, value in parser.items(section):
            value = value.replace("%(here)s/..", str(SUPERVISOR_DIR.parent))
            parser.set(section, key, value.replace("%(here)s", str(SUPERVISOR_DIR)))
    return parser


def app_settings(environ: dict[str, str]) -> dict[str, str]:
    """The ZIMAGE_* variables that configure the app (sorted, so the file is stable)."""
    return {key: environ[key] for key in sorted(environ)
            if key.startswith("ZIMAGE_") and key not in SETUP_ONLY_VARIABLES}


def format_environment(variables: dict[str, str]) -> str:
    """KEY="value",... as supervisor's environment= parses it: quotes without escapes, '%' doubled."""
    parts = []
    for key, value in variables.items():
        quote = '"' if '"' not in value else "'"
        # supervisor's lexer knows no escapes and strips quote characters from both ends of a value.
        if quote in value or any(end in "'\"" for end in value[:1] + value[-1:]):
            raise ValueError(f"{key}={value!r}: supervisor cannot carry this value (quotes at its ends, or both "
                             "kinds of quotes); rename the path or put the setting in a ZIMAGE_CONFIG file")
        parts.append(f"{key}={quote}{value.replace('%', '%%')}{quote}")
    return ",".join(parts)


def _with_python(command: str, python: str) -> str:
    """Replace the interpreter (first word) of a shipped command by this machine's venv python."""
    words = command.split(maxsplit=1)
    return python if len(words) == 1 else f"{python} {words[1]}"


def overrides(shipped: configparser.RawConfigParser, python: str, log_file: str,
              settings: dict[str, str]) -> dict[str, dict[str, str]]:
    """Per section, the keys whose values differ on this machine."""
    result = {}
    for section in (PROGRAM_SECTION, WATCHDOG_SECTION):
        environment = dict_of_key_value_pairs(shipped.get(section, "environment", fallback=""))
        environment.update(settings)
        result[section] = {
            "command": _with_python(shipped.get(section, "command"), python),
            "environment": format_environment(environment),
        }
    result[PROGRAM_SECTION]["stdout_logfile"] = log_file
    return result


def render(sections: dict[str, dict[str, str]], header: str) -> str:
    """INI text of the given sections."""
    lines = [f"; {line}" if line else ";" for line in header.splitlines()]
    for section, values in sections.items():
        lines += ["", f"[{section}]"] + [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def local_conf(python: str, log_file: str, environ: dict[str, str]) -> str:
    """Text of supervisor/run/local.conf."""
    header = ("Written by scripts/setup_and_start.sh for this machine; it is rewritten on every run.\n"
              "Overrides keys of supervisor/z-image-turbo.conf (included after it by supervisord.conf).")
    return render(overrides(read_shipped(), python, log_file, app_settings(environ)), header)


def system_conf(python: str, log_file: str, environ: dict[str, str]) -> str:
    """Self-contained copy of the shipped sections with absolute paths, for /etc/supervisor/conf.d/."""
    shipped = read_shipped()
    sections = {section: dict(shipped.items(section)) for section in shipped.sections()}
    for section, values in overrides(shipped, python, log_file, app_settings(environ)).items():
        sections[section].update(values)
    header = (f"Z-Image-Turbo for a system supervisord, generated from {PROGRAM_CONF}.\n"
              "Regenerate with: bash scripts/setup_and_start.sh --print-system-conf")
    return render(sections, header)


def main(argv: list[str] | None = None) -> None:
    """CLI: `local` writes run/local.conf, `system` prints the /etc/supervisor/conf.d/ version."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("local", "system"))
    parser.add_argument("--python", required=True, help="the venv's python (made absolute)")
    parser.add_argument("--log-file", required=True, help="where the app's output goes")
    args = parser.parse_args(argv)
    try:
        text_for = {"local": local_conf, "system": system_conf}[args.mode]
        text = text_for(os.path.abspath(args.python), os.path.abspath(args.log_file), dict(os.environ))
    except ValueError as error:
        sys.exit(f"local_conf.py: {error}")
    if args.mode == "local":
        LOCAL_CONF.parent.mkdir(exist_ok=True)
        LOCAL_CONF.write_text(text, encoding="utf-8")
        print(f"wrote {LOCAL_CONF}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
