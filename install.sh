#!/usr/bin/env bash
# Installs gptoss for the current user on Linux, without sudo: a virtual environment in
# ${XDG_DATA_HOME:-~/.local/share}/gptoss/venv, the PyTorch build that fits the NVIDIA driver (chosen by
# gptoss_cli.install_logic, as install.ps1 does on Windows), a gptoss link in ~/.local/bin, then `gptoss doctor`.
# Running it again upgrades in place.
#
#   ./install.sh [--source SRC] [--python PYTHON] [--cpu]
#   ./install.sh --uninstall [--remove-models]
set -euo pipefail

ROOT="${XDG_DATA_HOME:-$HOME/.local/share}/gptoss"
VENV="$ROOT/venv"
BIN="$HOME/.local/bin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="" PYTHON="" CPU="" UNINSTALL="" REMOVE_MODELS="" SMI_FILE="" CHOICE=""

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }
step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf '    warning: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --remove-models) REMOVE_MODELS=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

supported() {  # prints the interpreter's path when it is CPython 3.10-3.13, 64-bit
  "$1" -c 'import struct, sys; print(sys.executable if (3,10) <= sys.version_info[:2] <= (3,13) and struct.calcsize("P") == 8 else "")' 2>/dev/null
}

find_python() {
  local candidate found
  for candidate in ${PYTHON:-python3.12 python3.13 python3.11 python3.10 python3}; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    found="$(supported "$candidate")"
    if [ -n "$found" ]; then echo "$found"; return 0; fi
  done
  return 1
}

models_dir() {  # asked of the installed gptoss (it honours GPTOSS_MODELS), else the default
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'from gptoss_cli.settings import models_dir; print(models_dir())' 2>/dev/null; then
    return 0
  fi
  echo "${GPTOSS_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/gptoss/models}"
}

uninstall() {
  step "Uninstalling gptoss"
  local models
  models="$(models_dir)"
  if [ -L "$BIN/gptoss" ] && [ "$(readlink "$BIN/gptoss")" = "$VENV/bin/gptoss" ]; then
    rm -f "$BIN/gptoss"; note "removed $BIN/gptoss"
  fi
  if [ -d "$VENV" ]; then rm -rf "$VENV"; note "removed $VENV"; fi
  if [ -n "$REMOVE_MODELS" ]; then
    if [ -d "$models" ]; then rm -rf "$models"; note "removed the models in $models"; fi
  elif [ -d "$models" ]; then
    note "kept the models in $models (add --remove-models to delete them)"
  fi
  rmdir "$ROOT" 2>/dev/null || true
  step "gptoss is uninstalled"
}

field() {  # one field of the installer's choice (lists one item a line, null as nothing)
  "$VENV/bin/python" -c 'import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print("\n".join(v) if isinstance(v, list) else ("" if v is None else v))' "$CHOICE" "$1"
}

install() {
  local src="$SOURCE" base pip=("$VENV/bin/python" -m pip)
  if [ -z "$src" ]; then
    if [ -f "$HERE/pyproject.toml" ] && [ -d "$HERE/gptoss_cli" ]; then src="$HERE"; else src="gptoss"; fi
  fi

  step "Looking for Python 3.10-3.13"
  if ! base="$(find_python)"; then
    echo "No 64-bit Python 3.10-3.13 found. Install one with your package manager (e.g. sudo apt install python3 python3-venv)" >&2
    echo "or from python.org, then run this script again (or pass --python /path/to/python3)." >&2
    exit 1
  fi
  note "using $base"

  if [ -x "$VENV/bin/python" ] && [ -z "$(supported "$VENV/bin/python")" ]; then
    warn "the environment in $VENV is broken (was its Python removed?); recreating it"
    rm -rf "$VENV"
  fi
  if [ -x "$VENV/bin/python" ]; then
    step "Upgrading the environment in $VENV"
  else
    step "Creating the environment in $VENV"
    mkdir -p "$ROOT"
    if ! "$base" -m venv "$VENV"; then
      echo "Could not create a virtual environment. On Debian and Ubuntu: sudo apt install python3-venv" >&2
      exit 1
    fi
  fi
  "${pip[@]}" install --quiet --upgrade pip

  step "Installing gptoss from $src (its dependencies follow once torch is chosen)"
  "${pip[@]}" install --quiet --upgrade --force-reinstall --no-deps "$src"

  step "Choosing the PyTorch build for this PC"
  SMI_FILE="$(mktemp)"
  CHOICE="$(mktemp)"
  trap 'rm -f "$SMI_FILE" "$CHOICE"' EXIT
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=driver_version,name,memory.total,compute_cap --format=csv,noheader,nounits >"$SMI_FILE" 2>/dev/null ||
      nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader,nounits >"$SMI_FILE" 2>/dev/null ||
      : >"$SMI_FILE"
  fi
  "$VENV/bin/python" -m gptoss_cli.install_logic choose --os linux --smi-file "$SMI_FILE" ${CPU:+--cpu} >"$CHOICE"
  while IFS= read -r line; do [ -n "$line" ] && note "$line"; done < <(field reasons)
  while IFS= read -r line; do [ -n "$line" ] && warn "$line"; done < <(field warnings)

  if [ "$(field replace_installed_torch)" = "True" ]; then
    step "Removing the torch build that does not fit"
    "${pip[@]}" uninstall --yes torch
  fi
  step "Installing PyTorch ($(field build)) from $(field index_url) (a large download the first time)"
  "${pip[@]}" install --upgrade "$(field torch_requirement)" --index-url "$(field index_url)"

  step "Installing the rest of what gptoss needs"
  "${pip[@]}" install --quiet --upgrade --upgrade-strategy only-if-needed "$src"

  step "Linking $BIN/gptoss"
  mkdir -p "$BIN"
  ln -sfn "$VENV/bin/gptoss" "$BIN/gptoss"
  case ":$PATH:" in
    *":$BIN:"*) ;;
    *) warn "$BIN is not on your PATH: add  export PATH=\"\$HOME/.local/bin:\$PATH\"  to ~/.bashrc (or your shell's profile)" ;;
  esac

  step "Checking the installation (gptoss doctor)"
  local code=0
  "$BIN/gptoss" doctor || code=$?
  exit "$code"
}

if [ -n "$REMOVE_MODELS" ] && [ -z "$UNINSTALL" ]; then echo "--remove-models only goes with --uninstall" >&2; exit 2; fi
if [ -n "$UNINSTALL" ]; then uninstall; else install; fi
