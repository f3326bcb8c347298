#!/usr/bin/env bash
# Install gpumgr as a systemd service on this host (run as root):
#
#   sudo bash scripts/install.sh              install or upgrade
#   sudo bash scripts/install.sh --uninstall  remove it, keeping /etc/gpumgr, the weights and state
#   bash scripts/install.sh --root DIR        install under DIR instead of / (tests)
#
# What it does: a `gpumgr` system user (added to the video and render groups where they exist);
# the code in /opt/gpumgr with a virtualenv holding only the runtime dependencies
# (scripts/bootstrap.sh ""); /etc/gpumgr from config/ for every file that is absent (an existing
# file is never overwritten), plus /etc/gpumgr/credentials (0700) for secrets; the unit in
# /etc/systemd/system; /usr/local/bin/gpumgr; then `gpumgr validate` and `gpumgr doctor`, and the
# next steps. GPUMGR_BOOTSTRAP overrides the command that builds the virtualenv (tests).
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTROOT=""
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) UNINSTALL=1 ;;
    --root) DESTROOT="${2:?--root needs a directory}"; shift ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$DESTROOT" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo bash scripts/install.sh), or --root DIR" >&2
  exit 2
fi
PREFIX="$DESTROOT/opt/gpumgr"
ETC="$DESTROOT/etc/gpumgr"
UNIT_DIR="$DESTROOT/etc/systemd/system"
BIN_DIR="$DESTROOT/usr/local/bin"
USER_NAME="gpumgr"
have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "install.sh: $*"; }
systemctl_() { if have systemctl; then systemctl "$@" || true; fi; }

if [ "$UNINSTALL" -eq 1 ]; then
  systemctl_ disable --now gpumgr.service
  rm -f "$UNIT_DIR/gpumgr.service"
  systemctl_ daemon-reload
  rm -f "$BIN_DIR/gpumgr"
  if [ "$PREFIX" != "$SRC" ]; then rm -rf "$PREFIX"; else rm -rf "$PREFIX/.venv"; fi
  say "removed the unit, /usr/local/bin/gpumgr and $PREFIX"
  say "kept: $ETC (configuration and credentials), /var/cache/gpumgr (weights), /var/lib/gpumgr"
  say "(state) and the $USER_NAME user; remove them by hand if you want them gone"
  exit 0
fi

# 1. the system user, in the GPU device groups this host has
if ! getent passwd "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/gpumgr --no-create-home --shell /usr/sbin/nologin \
    --user-group "$USER_NAME"
  say "created the system user $USER_NAME"
fi
for group in video render; do
  if getent group "$group" >/dev/null 2>&1; then usermod -aG "$group" "$USER_NAME"; fi
done

# 2. the code and a virtualenv with only the runtime dependencies
if [ "$PREFIX" != "$SRC" ]; then
  mkdir -p "$PREFIX"
  for part in daemon config systemd scripts docs pyproject.toml README.md; do
    rm -rf "${PREFIX:?}/$part"
    cp -a "$SRC/$part" "$PREFIX/$part"
  done
  find "$PREFIX/daemon" -name __pycache__ -prune -exec rm -rf {} +
fi
export GPUMGR_VENV="$PREFIX/.venv"
if [ -n "${GPUMGR_BOOTSTRAP:-}" ]; then
  "$GPUMGR_BOOTSTRAP" "$GPUMGR_VENV"
else
  bash "$PREFIX/scripts/bootstrap.sh" ""
fi
GPUMGR="$GPUMGR_VENV/bin/gpumgr"
[ -x "$GPUMGR" ] || { echo "install.sh: $GPUMGR was not created" >&2; exit 1; }

# 3. configuration: the examples where a file is absent, never over an existing one
mkdir -p "$ETC"
for f in "$SRC"/config/*.yaml; do
  name="$(basename "$f")"
  if [ -e "$ETC/$name" ]; then
    say "kept $ETC/$name"
  else
    cp "$f" "$ETC/$name"
    say "wrote $ETC/$name (from config/$name: edit it)"
  fi
done
[ -e "$ETC/environment" ] || { : > "$ETC/environment"; chmod 0600 "$ETC/environment"; }
mkdir -p "$ETC/credentials"
chmod 0700 "$ETC/credentials"

# 4. the unit and the command
mkdir -p "$UNIT_DIR" "$BIN_DIR"
install -m 0644 "$SRC/systemd/gpumgr.service" "$UNIT_DIR/gpumgr.service"
ln -sfn "$GPUMGR" "$BIN_DIR/gpumgr"
systemctl_ daemon-reload

# 5. check what we installed
say "gpumgr validate:"
"$GPUMGR" validate --config-dir "$ETC" || say "fix the configuration above, then run it again"
say "gpumgr doctor:"
"$GPUMGR" doctor --config-dir "$ETC" || true
cat <<NEXT

Next steps:
  1. edit $ETC/providers.yaml (your providers) and gpumgr.yaml; check with: gpumgr validate
  2. secrets: one file per variable in $ETC/credentials/ (e.g. HF_TOKEN, OLLAMA_CLOUD_API_KEY),
     mode 0600, root-owned; systemd hands them to the daemon as credentials
  3. sudo systemctl enable --now gpumgr
  4. gpumgr status; journalctl -u gpumgr -f; gpumgr doctor
NEXT
