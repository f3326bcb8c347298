#!/usr/bin/env bash
# Install gpumgr as a systemd service on this host (run as root):
#
#   sudo bash scripts/install.sh              install or upgrade
#   sudo bash scripts/install.sh --uninstall  remove what install recorded, keeping /etc/gpumgr,
#                                             the weights and state
#   bash scripts/install.sh --root DIR        install under DIR instead of / (tests): touches
#                                             nothing outside DIR, prints the host commands
#                                             (useradd, usermod, systemctl) it would run
#   --force                                   replace files gpumgr did not install
#
# What it does: a `gpumgr` system user (added to the video and render groups where they exist);
# the code in /opt/gpumgr with a virtualenv holding only the runtime dependencies
# (scripts/bootstrap.sh ""); /etc/gpumgr from config/ for every file that is absent (an existing
# file is never overwritten), plus /etc/gpumgr/credentials (0700) for secrets; the unit in
# /etc/systemd/system; /usr/local/bin/gpumgr; then `gpumgr validate` and `gpumgr doctor`, and the
# next steps. Every path it writes is listed in /var/lib/gpumgr/install.manifest; it stops
# before writing anything if the unit, the command or /opt/gpumgr exists and is not listed there
# (not gpumgr's: say so, or --force), and --uninstall removes only what the manifest lists.
# GPUMGR_BOOTSTRAP overrides the command that builds the virtualenv (tests).
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTROOT=""
UNINSTALL=0
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) UNINSTALL=1 ;;
    --force) FORCE=1 ;;
    --root) DESTROOT="${2:?--root needs a directory}"; shift ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$DESTROOT" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo bash scripts/install.sh), or --root DIR" >&2
  exit 2
fi
if [ -n "$DESTROOT" ]; then
  mkdir -p "$DESTROOT"
  DESTROOT="$(cd "$DESTROOT" && pwd)"
fi
PREFIX="$DESTROOT/opt/gpumgr"
ETC="$DESTROOT/etc/gpumgr"
UNIT_DIR="$DESTROOT/etc/systemd/system"
UNIT="$UNIT_DIR/gpumgr.service"
BIN_DIR="$DESTROOT/usr/local/bin"
LINK="$BIN_DIR/gpumgr"
MANIFEST_DIR="$DESTROOT/var/lib/gpumgr"
MANIFEST="$MANIFEST_DIR/install.manifest"
USER_NAME="gpumgr"
have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "install.sh: $*"; }
# A command that changes the host itself (users, systemd): with --root it is only printed.
host() {
  if [ -n "$DESTROOT" ]; then say "would run: $*"; else "$@"; fi
}
systemctl_() {
  if [ -n "$DESTROOT" ]; then say "would run: systemctl $*"
  elif have systemctl; then systemctl "$@" || true; fi
}

# The manifest: one "KIND PATH" line per thing install wrote (tree: a directory it owns whole;
# file, link; config: kept at uninstall).
listed() { [ -f "$MANIFEST" ] && grep -qxF "$1 $2" "$MANIFEST"; }
record() {
  mkdir -p "$MANIFEST_DIR"
  listed "$1" "$2" || echo "$1 $2" >> "$MANIFEST"
}

if [ "$UNINSTALL" -eq 1 ]; then
  if [ ! -f "$MANIFEST" ]; then
    say "no install manifest at $MANIFEST: nothing removed (remove a hand-made install by hand)"
    exit 1
  fi
  systemctl_ disable --now gpumgr.service
  removed=()
  while read -r kind path; do
    case "$kind" in
      file) if [ -f "$path" ] && [ ! -L "$path" ]; then rm -f "$path"; removed+=("$path"); fi ;;
      link) if [ -L "$path" ]; then rm -f "$path"; removed+=("$path"); fi ;;
      tree) if [ -d "$path" ] && [ "$path" != "$SRC" ]; then rm -rf "$path"; removed+=("$path"); fi ;;
      config) ;;  # configuration and credentials are the operator's now: kept
    esac
  done < "$MANIFEST"
  systemctl_ daemon-reload
  rm -f "$MANIFEST"
  say "removed: ${removed[*]:-nothing}"
  say "kept: $ETC (configuration and credentials), /var/cache/gpumgr (weights), /var/lib/gpumgr"
  say "(state) and the $USER_NAME user; remove them by hand if you want them gone"
  exit 0
fi

# 0. refuse to replace what gpumgr did not install (before writing anything)
conflicts=()
if [ -e "$LINK" ] || [ -L "$LINK" ]; then
  listed link "$LINK" || conflicts+=("$LINK")
fi
if [ -e "$UNIT" ]; then
  listed file "$UNIT" || conflicts+=("$UNIT")
fi
if [ "$PREFIX" != "$SRC" ] && [ -e "$PREFIX" ] && [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ]; then
  listed tree "$PREFIX" || conflicts+=("$PREFIX")
fi
if [ "${#conflicts[@]}" -gt 0 ]; then
  if [ "$FORCE" -eq 1 ]; then
    say "--force: replacing ${conflicts[*]} (not installed by gpumgr)"
  else
    echo "install.sh: not installed by gpumgr (no record in $MANIFEST): ${conflicts[*]};" \
      "move it away, or run again with --force to replace it" >&2
    exit 1
  fi
fi

# 1. the system user, in the GPU device groups this host has
if ! getent passwd "$USER_NAME" >/dev/null 2>&1; then
  host useradd --system --home-dir /var/lib/gpumgr --no-create-home --shell /usr/sbin/nologin \
    --user-group "$USER_NAME"
  [ -n "$DESTROOT" ] || say "created the system user $USER_NAME"
fi
for group in video render; do
  if getent group "$group" >/dev/null 2>&1; then host usermod -aG "$group" "$USER_NAME"; fi
done

# 2. the code and a virtualenv with only the runtime dependencies
if [ "$PREFIX" != "$SRC" ]; then
  record tree "$PREFIX"
  mkdir -p "$PREFIX"
  for part in daemon config systemd scripts docs pyproject.toml README.md; do
    rm -rf "${PREFIX:?}/$part"
    cp -a "$SRC/$part" "$PREFIX/$part"
  done
  find "$PREFIX/daemon" -name __pycache__ -prune -exec rm -rf {} +
else
  record tree "$PREFIX/.venv"
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
    record config "$ETC/$name"
    say "wrote $ETC/$name (from config/$name: edit it)"
  fi
done
if [ ! -e "$ETC/environment" ]; then
  : > "$ETC/environment"; chmod 0600 "$ETC/environment"; record config "$ETC/environment"
fi
mkdir -p "$ETC/credentials"
chmod 0700 "$ETC/credentials"

# 4. the unit and the command
mkdir -p "$UNIT_DIR" "$BIN_DIR"
record file "$UNIT"
rm -rf "$UNIT"
install -m 0644 "$SRC/systemd/gpumgr.service" "$UNIT"
record link "$LINK"
rm -rf "$LINK"
ln -s "$GPUMGR" "$LINK"
systemctl_ daemon-reload

# 5. check what we installed
say "gpumgr validate:"
"$GPUMGR" validate --config-dir "$ETC" || say "fix the configuration above, then run it again"
if [ -n "$DESTROOT" ]; then
  say "gpumgr doctor: skipped with --root (it checks this host's driver and systemd)"
else
  say "gpumgr doctor:"
  "$GPUMGR" doctor --config-dir "$ETC" || true
fi
cat <<NEXT

Next steps:
  1. edit $ETC/providers.yaml (your providers) and gpumgr.yaml; check with: gpumgr validate
  2. secrets: one file per variable in $ETC/credentials/ (e.g. HF_TOKEN, OLLAMA_CLOUD_API_KEY),
     mode 0600, root-owned; systemd hands them to the daemon as credentials
  3. sudo systemctl enable --now gpumgr
  4. gpumgr status; journalctl -u gpumgr -f; gpumgr doctor
NEXT
