#!/bin/sh
# Installs the Node peer's dependencies (the `ws` package, pinned in package.json and
# package-lock.json) next to server.js. Needs node >= 18 and npm.
set -eu
cd "$(dirname "$0")"
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
else
    npm install --no-audit --no-fund
fi
