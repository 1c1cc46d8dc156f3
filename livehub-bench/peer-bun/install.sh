#!/bin/sh
# Installs the Bun peer: the `bun` npm package (pinned in package.json and package-lock.json),
# whose platform package (@oven/bun-linux-x64, ...) ships Bun's binary; its postinstall
# links the binary to node_modules/.bin/bun, which livehub-bench runs. Needs node >= 18 and npm.
set -eu
cd "$(dirname "$0")"
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
else
    npm install --no-audit --no-fund
fi
# Where install scripts were skipped, the placeholder is still there: run bun's own.
if ! node_modules/.bin/bun --version >/dev/null 2>&1; then
    node node_modules/bun/install.js
fi
echo "bun $(node_modules/.bin/bun --version) in $(pwd)/node_modules/.bin/bun"
