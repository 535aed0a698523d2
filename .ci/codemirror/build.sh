#!/usr/bin/env bash
# Rebuild static/vendor/codemirror-6.min.js and its licence file from the pinned npm
# packages of .ci/codemirror/package.json (exact versions, package-lock.json with integrity
# hashes). Needs node >= 18 and npm; installs under var/codemirror-build/ (git-ignored).
#
#   bash .ci/codemirror/build.sh
#
# The output is deterministic for a given lock file: run it, and `git diff static/vendor`
# shows nothing unless a version changed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$ROOT/var/codemirror-build"
OUT="$ROOT/static/vendor/codemirror-6.min.js"
LICENCE="$ROOT/static/vendor/LICENSE.codemirror.txt"

mkdir -p "$BUILD"
cp "$HERE/package.json" "$HERE/package-lock.json" "$BUILD/"
rm -rf "$BUILD/src" && cp -r "$HERE/src" "$BUILD/src"
(cd "$BUILD" && npm ci --no-audit --no-fund --loglevel=error)
"$BUILD/node_modules/.bin/esbuild" "$BUILD/src/index.js" \
  --bundle --minify --format=iife --global-name=ClearwayCodeMirror \
  --target=es2020 --legal-comments=none --charset=utf8 --outfile="$OUT"

# One licence file for everything in the bundle: each package's name, version and LICENSE.
{
  echo "static/vendor/codemirror-6.min.js bundles the following npm packages (all MIT),"
  echo "built by .ci/codemirror/build.sh, plus Clearway's own Rego mode (.ci/codemirror/src/rego.js,"
  echo "under Clearway's licence)."
  for dir in $(cd "$BUILD/node_modules" && ls -d @*/* [!@.]* | sort); do
    pkg="$BUILD/node_modules/$dir"
    [ -f "$pkg/package.json" ] || continue
    case "$dir" in esbuild|@esbuild/*) continue ;; esac
    version="$(node -p "require('$pkg/package.json').version")"
    echo
    echo "================================================================================"
    echo "$dir $version"
    echo "================================================================================"
    cat "$pkg"/LICENSE* 2>/dev/null || echo "(licence: $(node -p "require('$pkg/package.json').license"))"
  done
} > "$LICENCE"
sha256sum "$OUT" "$LICENCE" | sed "s|$ROOT/||"
