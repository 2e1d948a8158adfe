#!/usr/bin/env bash
# Make sure the Fashion-MNIST IDX files are on this machine (the demo and the tests read them).
# Order: $FAE_FASHION_MNIST (a folder you provide) -> /usr/share/datasets/fashion-mnist (Debian's
# dataset-fashion-mnist) -> install that package with apt-get (as root, or through `sudo -n`).
# Anything else (no apt-get, no root) stops with one message saying what to do. Called by `make demo` / `make test`.
set -euo pipefail
PACKAGE=dataset-fashion-mnist
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

has_files() {  # every IDX file, gzipped or not, in folder $1
    local f
    for f in $FILES; do
        [ -f "$1/$f.gz" ] || [ -f "$1/$f" ] || return 1
    done
}

if [ -n "${FAE_FASHION_MNIST:-}" ]; then
    if has_files "$FAE_FASHION_MNIST"; then exit 0; fi
    echo "error: \$FAE_FASHION_MNIST=$FAE_FASHION_MNIST does not hold the four Fashion-MNIST IDX files" \
         "($FILES, optionally .gz)" >&2
    exit 1
fi
has_files "$DEBIAN_DIR" && exit 0

# Not Debian/Ubuntu (macOS, Fedora, Arch, ...): the four files come from the Fashion-MNIST release.
FETCH="download the four .gz files of the Fashion-MNIST release (GitHub: zalandoresearch/fashion-mnist, \
folder data/fashion) into a folder and set FAE_FASHION_MNIST=/that/folder"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: Fashion-MNIST is missing and this machine has no apt-get: $FETCH" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    run=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run=(sudo -n)
else
    echo "error: Fashion-MNIST is missing. Install it with:  sudo apt-get install $PACKAGE" \
         "(or $FETCH)" >&2
    exit 1
fi
echo "Fashion-MNIST is missing: installing the Debian package $PACKAGE" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${run[@]}" apt-get install -y -qq "$PACKAGE" >/dev/null 2>&1; then
    "${run[@]}" apt-get update -qq >/dev/null
    "${run[@]}" apt-get install -y -qq "$PACKAGE" >/dev/null
fi
has_files "$DEBIAN_DIR" || { echo "error: $PACKAGE installed, but $DEBIAN_DIR lacks the IDX files" >&2; exit 1; }
