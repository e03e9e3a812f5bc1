# Shared by the campaign drivers (sourced, not run). Each driver takes the machine's short name first
# (h100, h200x2, rtx4090, ...: the folder name's second half) and then the part to run; each part fits one
# 10-minute command. Results go to $OUT/<date>-<machine>/ under the names benchmarks/results/ uses, so the
# folder can be copied there as it is.
set -u
export PYTHONUNBUFFERED=1
MACHINE=${1:?machine short name, e.g. h100 or h200x2}
PART=${2:-}
OUT=${OUT:-/tmp/out}
RESULTS=$OUT/$(date +%Y-%m-%d)-$MACHINE
mkdir -p "$RESULTS"
# The profile plans are made with: a profile taken on this machine earlier in the same lease if there is one
# (host speed differs between machines of one kind), else $PROFILE (default: the catalog's measured H100).
PROFILE=${PROFILE:-hwprofiles/catalog/h100-sxm-measured.json}
LOCAL_PROFILE=/tmp/headplan-profile-$MACHINE.json

plan_profile() {
    if [ -f "$LOCAL_PROFILE" ]; then echo "$LOCAL_PROFILE"; else
        echo "no profile taken on this machine yet; plans use $PROFILE" >&2; echo "$PROFILE"; fi
}

# cells TIMEOUT_S CELLS [FILE]: validate.py cells, appended to $RESULTS/FILE (default validation.jsonl)
cells() {
    python3 benchmarks/validate.py run --hw "$(plan_profile)" --out "$RESULTS/${3:-validation.jsonl}" \
        --timeout-s "$1" --cells "$2" ${EXTRA:+--extra="$EXTRA"}
}

# full_profile NAME: headplan profile (full mode) -> $RESULTS/profile.json and profile-full.txt, kept for later parts
# (201 s on the H100 on 2026-11-22; the executor-step table now also covers every built-in (head dim, GQA ratio),
# about 35 s more)
full_profile() {
    timeout 420 python3 -m headplan.cli profile --name "$1" --out "$RESULTS/profile.json" --force 2>&1 \
        | tee "$RESULTS/profile-full.txt" | tail -4
    cp "$RESULTS/profile.json" "$LOCAL_PROFILE"
}

usage() { echo "usage: $0 MACHINE PART   (parts: $1)" >&2; exit 2; }
