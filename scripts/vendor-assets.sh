#!/usr/bin/env bash
# Vendor the few third-party browser files the service and its tests use, from the npm registry, at pinned
# versions (npm pack: the published tarball, no install scripts run). The results are committed, so the
# service and the tests work without internet; rerun this (`make vendor`) only to change a version.
#   swagger-ui-dist -> serving/static/vendor/ (served by the service for GET /docs)
#   axe-core        -> tests/vendor/axe-core/ (injected into the page by the browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
SWAGGER_UI_VERSION=5.35.0
AXE_CORE_VERSION=4.14.1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$SWAGGER_UI_VERSION" "axe-core@$AXE_CORE_VERSION" >/dev/null)

mkdir -p "$work/swagger" "$work/axe"
tar -xzf "$work/swagger-ui-dist-$SWAGGER_UI_VERSION.tgz" -C "$work/swagger"
tar -xzf "$work/axe-core-$AXE_CORE_VERSION.tgz" -C "$work/axe"

out=serving/static/vendor
mkdir -p "$out"
cp "$work/swagger/package/swagger-ui-bundle.js" "$work/swagger/package/swagger-ui.css" \
   "$work/swagger/package/favicon-32x32.png" "$out/"
cp "$work/swagger/package/LICENSE" "$out/LICENSE-swagger-ui-dist"
echo "swagger-ui-dist $SWAGGER_UI_VERSION (npm)" > "$out/VERSIONS"

tests_out=tests/vendor/axe-core
mkdir -p "$tests_out"
cp "$work/axe/package/axe.min.js" "$work/axe/package/LICENSE" "$tests_out/"
echo "axe-core $AXE_CORE_VERSION (npm)" > "$tests_out/VERSION"
echo "vendored swagger-ui-dist $SWAGGER_UI_VERSION into $out and axe-core $AXE_CORE_VERSION into $tests_out"
