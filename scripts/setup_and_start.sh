#!/usr/bin/env bash
# Set up Z-Image-Turbo on this machine and start it under supervisord (the README's first command).
#
#   bash scripts/setup_and_start.sh                       # set up, start in the background, print where it is
#   bash scripts/setup_and_start.sh --foreground          # same, but supervisord stays in front (Ctrl-C stops)
#   bash scripts/setup_and_start.sh --print-system-conf   # print the program section for /etc/supervisor/conf.d/
#
# Safe to run again: it reuses the venv, skips complete weights, resumes partial ones, and applies changed
# settings to a running supervisord. Settings (see README, "Configuration"):
#   ZIMAGE_WEIGHTS_DIR   weights folder (default ./weights); a tiny test model works too
#   ZIMAGE_*             every app setting (port, device, memory mode...), recorded in supervisor/run/local.conf
#   ZIMAGE_VENV          virtualenv to create or reuse (default ./.venv)
#   ZIMAGE_PYTHON        interpreter that creates it (default python3; 3.11 or newer)
#   ZIMAGE_LOG_FILE      app log (default /var/log/z-image-turbo.log; falls back to supervisor/run/ if unwritable)
#   ZIMAGE_BIN_DIR       where the `supervisorctl` command goes (default /usr/local/bin as root, else ~/.local/bin)
#   ZIMAGE_DOWNLOAD      auto (default) | skip
#   ZIMAGE_DOWNLOAD_LAYOUT comfy (default) | hf;  HF_ENDPOINT=https://hf-mirror.com for mainland China
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

FOREGROUND=0
PRINT_SYSTEM_CONF=0
for arg in "$@"; do
  case "$arg" in
    --foreground|-f) FOREGROUND=1 ;;
    --print-system-conf) PRINT_SYSTEM_CONF=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n==> %s\n' "$*"; }

VENV="${ZIMAGE_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
PY="$VENV/bin/python"
CONF="$REPO/supervisor/supervisord.conf"
CTL=("$VENV/bin/supervisorctl" -c "$CONF")

# A relative weights folder means "inside the repository", as it does for the app (cwd = repository).
WEIGHTS="${ZIMAGE_WEIGHTS_DIR:-weights}"
case "$WEIGHTS" in /*) ;; "~"*) WEIGHTS="${WEIGHTS/#\~/$HOME}" ;; *) WEIGHTS="$REPO/$WEIGHTS" ;; esac
export ZIMAGE_WEIGHTS_DIR="$WEIGHTS"

setup_venv() {
  if [ ! -x "$PY" ]; then
    local base="${ZIMAGE_PYTHON:-python3}"
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "!! $base is missing or older than Python 3.11, which the app needs." >&2
      echo "   Install one (Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv) and run:" >&2
      echo "   ZIMAGE_PYTHON=python3.11 bash scripts/setup_and_start.sh" >&2
      exit 1
    fi
    say "Creating the virtualenv $VENV"
    "$base" -m venv "$VENV" || { echo "$base -m venv failed: install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
    "$PY" -m pip install -q --upgrade pip
  fi
  say "Installing requirements.txt into $VENV"
  "$PY" -m pip install -q -r requirements.txt
}

fetch_weights() {
  if [ "${ZIMAGE_DOWNLOAD:-auto}" = skip ]; then
    say "ZIMAGE_DOWNLOAD=skip: not downloading weights"
    return
  fi
  say "Checking the weights in $WEIGHTS"
  local rc=0
  "$PY" scripts/download_weights.py --dir "$WEIGHTS" || rc=$?
  case "$rc" in
    0) ;;
    3) echo "!! The weights could not be fetched (no connection to the hub, see above)." \
            "The server starts anyway and shows a 'weights missing' banner; run this script again once online." ;;
    4) echo "!! The weights download was interrupted; run this script again to resume it. Starting without them." ;;
    *) echo "!! The weights could not be fetched (see the message above). Starting without them." ;;
  esac
}

prepare_log() {
  LOG="${ZIMAGE_LOG_FILE:-/var/log/z-image-turbo.log}"
  if { [ -e "$LOG" ] && [ -w "$LOG" ]; } || { [ ! -e "$LOG" ] && touch "$LOG" 2>/dev/null; }; then
    return
  fi
  # Not root: creating a file in /var/log needs sudo once; never prompt for a password here.
  if command -v sudo >/dev/null && sudo -n sh -c "touch '$LOG' && chown $(id -u):$(id -g) '$LOG'" 2>/dev/null; then
    return
  fi
  local fallback="$REPO/supervisor/run/z-image-turbo.log"
  echo "!! Cannot write $LOG (not root, no password-less sudo). Logging to $fallback instead."
  echo "   To log to $LOG: sudo sh -c 'touch $LOG && chown $(id -un) $LOG'  and run this script again."
  LOG="$fallback"
}

supervisord_running() { "${CTL[@]}" pid >/dev/null 2>&1; }

read_address() {
  local address
  # A bad setting stops here with the app's own message instead of a crash loop under supervisord.
  address="$("$PY" -c 'import sys
from app.settings import SettingsError, load_settings
try:
    s = load_settings()
except SettingsError as error:
    sys.exit(f"!! {error}")
print(s.host, s.port)')" || exit 1
  read -r HOST PORT <<<"$address"
  PROBE_HOST="$HOST"
  case "$HOST" in 0.0.0.0|::|"") PROBE_HOST=127.0.0.1 ;; esac
}

# Until supervisord calls the program RUNNING (it stayed up startsecs) and /health/live answers; 1 if it gave up.
wait_until_up() {
  local url="http://$PROBE_HOST:$PORT/health/live" state
  for _ in $(seq 1 180); do
    state="$("${CTL[@]}" status z-image-turbo 2>/dev/null | awk '{print $2}')" || true
    case "$state" in
      FATAL) return 1 ;;
      RUNNING) "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" \
                 2>/dev/null && return 0 ;;
    esac
    sleep 1
  done
  return 1
}

print_summary() {
  local ready="no"
  "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://$PROBE_HOST:$PORT/health/ready" 2>/dev/null && ready="yes"
  cat <<EOF

Z-Image-Turbo is running under supervisord.
  Web UI:       http://$PROBE_HOST:$PORT   (model ready: $ready; it loads and warms up in the background)
  From your PC: ssh -N -L $PORT:127.0.0.1:$PORT $(id -un)@$(hostname)   then open http://127.0.0.1:$PORT
  Logs:         tail -f $LOG
  Control:      supervisorctl status|stop|start|restart z-image-turbo   (from any directory)
  Health:       curl http://$PROBE_HOST:$PORT/health/ready   (200 once the model is loaded)
  Stop all:     supervisorctl shutdown
  Without PATH: $VENV/bin/supervisorctl -c $CONF status

已在 supervisord 下运行。浏览器打开 http://127.0.0.1:$PORT（远程服务器请先用上面的 ssh -L 建立隧道）。
日志：tail -f $LOG
EOF
}

if [ "$PRINT_SYSTEM_CONF" = 1 ]; then
  [ -x "$PY" ] || setup_venv >&2
  exec "$PY" supervisor/local_conf.py system --python "$PY" --log-file "${ZIMAGE_LOG_FILE:-/var/log/z-image-turbo.log}"
fi

setup_venv
read_address
fetch_weights
prepare_log
say "Writing supervisor/run/local.conf (venv, log file, ZIMAGE_* settings)"
"$PY" supervisor/local_conf.py local --python "$PY" --log-file "$LOG"
say "Putting a supervisorctl bound to this checkout on PATH"
"$PY" supervisor/ctl_wrapper.py install --venv "$VENV" --bin-dir "${ZIMAGE_BIN_DIR:-}"
"$PY" supervisor/ctl_wrapper.py venv-config --venv "$VENV"  # bare supervisorctl inside the activated venv too

if supervisord_running; then
  say "supervisord is already running: applying the new settings"
  "${CTL[@]}" reread
  "${CTL[@]}" update
  "${CTL[@]}" start z-image-turbo >/dev/null 2>&1 || true
elif [ "$FOREGROUND" = 1 ]; then
  say "Starting supervisord in the foreground (Ctrl-C stops it); UI at http://$PROBE_HOST:$PORT, log in $LOG"
  exec "$VENV/bin/supervisord" -n -c "$CONF"
else
  say "Starting supervisord"
  "$VENV/bin/supervisord" -c "$CONF"
fi

say "Waiting for the web server to answer on port $PORT"
if ! wait_until_up; then
  echo "!! z-image-turbo did not come up; the end of $LOG says why:" >&2
  tail -n 30 "$LOG" >&2 || true
  "${CTL[@]}" status || true
  exit 1
fi
"${CTL[@]}" status || true
print_summary
