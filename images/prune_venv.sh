#!/bin/sh
# prune_venv.sh VENV [LIST]: after slim-venv, in images/step.Dockerfile's `pruned` stage:
# - identical copies of a shared library become symbolic links to one of them (wheels cannot
#   hold links: pyarrow ships libarrow_python.so, .so.1000 and .so.1000.1.0, 1.8 MB each; the
#   loader and Python open the same bytes through the links);
# - LIST (images/prune/<extra>.txt, when the extra has one): site-packages paths or shell globs,
#   one a line (`#` comments), removed with the bytecode of a removed module. A pattern that
#   matches nothing is an error, so a list cannot silently go stale after a lock upgrade.
set -eu
venv=${1:?usage: prune_venv.sh VENV [LIST]}
list=${2:-}
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "error: prune_venv: no site-packages under $venv" >&2; exit 1; }
before=$(du -sk "$venv" | cut -f1)

# Identical shared libraries of one name in one directory (`name.so`, `name.so.N`, ...): the
# first in sort order stays a file, the others become relative links to it.
find "$site" -type f -name '*.so*' -size +100k | sort | while read -r file; do
    if [ ! -f "$file" ] || [ -L "$file" ]; then continue; fi
    dir=$(dirname "$file")
    stem=$(basename "$file" | sed 's/\.so.*$//')
    for other in "$dir/$stem".so*; do
        if [ "$other" = "$file" ] || [ ! -f "$other" ] || [ -L "$other" ]; then continue; fi
        if cmp -s "$file" "$other"; then
            ln -sf "$(basename "$file")" "$other"
        fi
    done
done

if [ -n "$list" ]; then
    [ -f "$list" ] || { echo "error: prune_venv: no list $list" >&2; exit 1; }
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$list" | while read -r pattern; do
        [ -n "$pattern" ] || continue
        found=0
        # shellcheck disable=SC2086  # the pattern is a glob on purpose
        for path in "$site"/$pattern; do
            [ -e "$path" ] || [ -L "$path" ] || continue
            found=1
            rm -rf "$path"
            case $path in
                *.py) base=$(basename "$path" .py)
                      rm -f "$(dirname "$path")/__pycache__/$base".*.pyc ;;
            esac
        done
        [ "$found" = 1 ] || { echo "error: prune_venv: $list: '$pattern' matches nothing in $site" >&2; exit 1; }
    done
fi
echo "prune_venv: $venv $((before / 1024)) MB -> $(($(du -sk "$venv" | cut -f1) / 1024)) MB"
