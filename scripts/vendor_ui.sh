#!/usr/bin/env bash
# Copies the dashboard's third-party files (pinned in ui/package.json and ui/package-lock.json)
# into api/ui/vendor/, with their licences: uPlot, axe-core, and Swagger UI for the API's /docs. The copies are committed, so running the service
# needs no Node.js; run this (`make ui-vendor`) only after changing a version in ui/package.json.
set -euo pipefail
cd "$(dirname "$0")/.."

(cd ui && npm ci --ignore-scripts --no-audit --no-fund --silent)
modules=ui/node_modules
vendor=api/ui/vendor
rm -rf "$vendor"
mkdir -p "$vendor/uplot" "$vendor/axe-core" "$vendor/swagger-ui"

cp "$modules/uplot/dist/uPlot.esm.js" "$modules/uplot/dist/uPlot.min.css" "$modules/uplot/LICENSE" "$vendor/uplot/"
cp "$modules/axe-core/axe.min.js" "$modules/axe-core/LICENSE" "$modules/axe-core/LICENSE-3RD-PARTY.txt" "$vendor/axe-core/"
swagger=$modules/swagger-ui-dist
cp "$swagger/swagger-ui-bundle.js" "$swagger/swagger-ui-bundle.js.LICENSE.txt" "$swagger/swagger-ui.css" \
   "$swagger/favicon-32x32.png" "$swagger/LICENSE" "$swagger/NOTICE" "$vendor/swagger-ui/"
for package in uplot axe-core swagger-ui-dist; do
  node -p "require('./$modules/$package/package.json').version" > "$vendor/${package%-dist}/VERSION"
done
echo "vendored into $vendor:"
(cd "$vendor" && find . -type f | sort)
