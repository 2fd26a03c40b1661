#!/usr/bin/env bash
# zt-ci.sh — run one CI step under zt-aas, then verify its audit log.
#
#   scripts/zt-ci.sh --policy FILE [--token FILE]... [--artifacts DIR] -- CMD [ARGS...]
#
# The step runs as `zt-aas run --policy FILE -- CMD...` with the current directory as its workspace. Its
# audit log and sealed head go to the artifacts directory (default: $ZT_CI_ARTIFACTS, else
# ./zt-aas-artifacts): DIR/audit.jsonl, DIR/head, and the audit key pair DIR/audit.key + DIR/audit.pub
# (created on first use; upload audit.pub, never audit.key). Afterwards the log is verified against the
# pinned public key and the head: `zt-aas audit verify DIR/audit.jsonl --key DIR/audit.pub --expect-head HEAD`.
#
# Exit status: the step's own (that of `zt-aas run`: 125 when zt-aas refused to start it, 128+N when it
# was killed by signal N), except 125 when the audit log does not verify — a step whose record cannot be
# trusted fails even if its command succeeded — and 125 on a bad command line of this script (as
# `zt-aas run` does).
#
# zt-aas is found as: $ZT_AAS, else `zt-aas` on PATH, else target/release/zt-aas or target/debug/zt-aas of
# the repository this script lies in.
set -euo pipefail

REFUSED=125

usage() {
    echo "usage: zt-ci.sh --policy FILE [--token FILE]... [--artifacts DIR] -- CMD [ARGS...]" >&2
    exit "$REFUSED"
}

die() {
    echo "zt-ci: $*" >&2
    exit "$REFUSED"
}

find_zt_aas() {
    if [[ -n "${ZT_AAS:-}" ]]; then
        [[ -x "$ZT_AAS" ]] || die "ZT_AAS=$ZT_AAS is not an executable file"
        printf '%s\n' "$ZT_AAS"
        return
    fi
    if command -v zt-aas >/dev/null 2>&1; then
        command -v zt-aas
        return
    fi
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    local candidate
    for candidate in "$here/../target/release/zt-aas" "$here/../target/debug/zt-aas"; do
        if [[ -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return
        fi
    done
    die "zt-aas not found: set ZT_AAS, put zt-aas on PATH, or run \`cargo build --release\`"
}

policy=""
artifacts="${ZT_CI_ARTIFACTS:-zt-aas-artifacts}"
tokens=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --policy)
            [[ $# -ge 2 ]] || usage
            policy=$2
            shift 2
            ;;
        --token)
            [[ $# -ge 2 ]] || usage
            tokens+=(--token "$2")
            shift 2
            ;;
        --artifacts)
            [[ $# -ge 2 ]] || usage
            artifacts=$2
            shift 2
            ;;
        --)
            shift
            break
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
            exit 0
            ;;
        *)
            echo "zt-ci: unexpected argument \`$1\` (the step's command comes after --)" >&2
            usage
            ;;
    esac
done
[[ -n "$policy" ]] || usage
[[ $# -gt 0 ]] || usage

# The artifacts directory, when it lies in the checkout, must not lead out of it through a symlink the
# change under review committed (`zt-aas-artifacts -> /elsewhere`): checked before anything is created.
no_link_in_checkout() {
    local path=$1
    [[ "$path" == /* ]] || path="$PWD/$path"
    case "$path/" in
        "$PWD"/*) ;;
        *) return 0 ;;
    esac
    local cur=$PWD part parts
    IFS=/ read -ra parts <<<"${path#"$PWD"}"
    for part in "${parts[@]}"; do
        case "$part" in
            "" | .) continue ;;
            ..) die "the artifacts directory $1 climbs out with .." ;;
        esac
        cur="$cur/$part"
        [[ -L "$cur" ]] && die "the artifacts directory $1 goes through the symlink $cur in the checkout"
    done
    return 0
}

zt=$(find_zt_aas)
no_link_in_checkout "$artifacts"
mkdir -p -- "$artifacts" || die "cannot create the artifacts directory $artifacts"
artifacts=$(cd -- "$artifacts" && pwd -P)
log="$artifacts/audit.jsonl"
head_file="$artifacts/head"
rm -f -- "$head_file"

set +e
"$zt" run --policy "$policy" ${tokens[@]+"${tokens[@]}"} --audit "$log" --audit-key "$artifacts/audit.key" \
    --head-out "$head_file" -- "$@"
status=$?
set -e

# The counts come from the session's own, signed session.end record once the log verifies, never from
# the step's stderr (which the step writes: it could end with a fake summary line of its own).
calls="unknown (the audit log did not verify)"
verified="no"
if [[ ! -s "$head_file" ]]; then
    verify_msg="not verified: no sealed session (zt-aas run did not start the step)"
else
    head=$(<"$head_file")
    if verify_out=$("$zt" audit verify "$log" --key "$artifacts/audit.pub" --expect-head "$head" 2>&1); then
        verified="yes"
        verify_msg="ok, head $head"
        # The canonical encoding: sorted keys, no spaces; these top-level members come before any string
        # of the agent's, which is escaped anyway (a quote inside a string is \").
        end=$(grep -F -- "\"hash\":\"$head\"" "$log" | head -n 1)
        count() {
            local re="\"$1\":([0-9]+)"
            [[ "$end" =~ $re ]] && printf '%s' "${BASH_REMATCH[1]}"
        }
        allowed=$(count calls_allowed) denied=$(count calls_denied) errors=$(count protocol_errors)
        if [[ -n "$allowed" && -n "$denied" && -n "$errors" ]]; then
            calls="$allowed allowed, $((denied + errors)) denied"
        fi
    else
        verify_msg="FAILED: $verify_out"
    fi
fi

{
    echo "zt-ci: ── summary ──"
    echo "zt-ci: step exit:   $status"
    echo "zt-ci: calls:       $calls"
    echo "zt-ci: audit:       $verify_msg"
    echo "zt-ci: artifacts:   $artifacts (audit.jsonl, head, audit.pub; audit.key is the signing key: never upload it)"
} >&2

if [[ "$verified" != "yes" && "$status" -ne "$REFUSED" ]]; then
    echo "zt-ci: the audit log did not verify: failing with $REFUSED" >&2
    exit "$REFUSED"
fi
exit "$status"
