#!/usr/bin/env bash
# Checks template.yaml offline: cfn-lint (any finding fails, warnings and
# informational ones included), then `sam validate --lint` (the SAM
# transform plus cfn-lint) when the SAM CLI can be installed. Also checks
# that the event fixtures parse.
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"

ensure_cfn_lint
echo "== cfn-lint $CFN_LINT_VERSION template.yaml"
"$LINT_VENV/bin/cfn-lint" --include-checks I --non-zero-exit-code informational -- template.yaml
echo "cfn-lint: no findings"

if ensure_sam_cli; then
    echo "== sam validate --lint (SAM CLI $SAM_CLI_VERSION)"
    # No credentials are needed: the region is given and nothing is called.
    AWS_REGION=us-east-1 "$LINT_VENV/bin/sam" validate --lint --region us-east-1 --template-file template.yaml
else
    echo "sam validate skipped: the SAM CLI is not installed (cfn-lint passed)" >&2
fi

echo "== event fixtures"
for f in events/*.json; do
    python3 -m json.tool "$f" >/dev/null || { echo "invalid JSON: $f" >&2; exit 1; }
    echo "ok $f"
done
