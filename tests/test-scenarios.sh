#!/usr/bin/env bash
# Run the eleven demo scenarios with swaks against a running gateway and print
# expected vs actual AUTH replies.
#
#   ./tests/test-scenarios.sh all      # every scenario
#   ./tests/test-scenarios.sh 3        # one scenario
#   SMTP_HOST=127.0.0.1 SMTP_PORT=2525 AUTH_MECH=LOGIN ./tests/test-scenarios.sh all
#   USERNAME_FORM=address ./tests/test-scenarios.sh all   # inboxes named by address
#
# Exit status: 0 when every reply matched, 1 otherwise, 2 on bad usage.
# Only the server's reply lines are printed: swaks's own transcript contains the
# base64 AUTH payload, so it is never shown.
set -u

HOST="${SMTP_HOST:-127.0.0.1}"
PORT="${SMTP_PORT:-2525}"
MECH="${AUTH_MECH:-PLAIN}"
FORM="${USERNAME_FORM:-id}"

VALID_KEY=am_validkey12345678901234567890123456
INVALID="535 5.7.8 Authentication credentials invalid"

# number | username | password | expected reply
SCENARIOS=(
  "1|inb_valid1234567890|$VALID_KEY|235 2.7.0 Authentication successful"
  "2|inb_valid1234567890|am_invalidkey|$INVALID"
  "3|inb_valid1234567890|am_doesnotexist0123456789012345678901|$INVALID"
  "4|inb_doesnotexist00000|$VALID_KEY|$INVALID"
  "5|inb_valid1234567890|am_wrongorg45678901234567890123456789|$INVALID"
  "6|inb_valid1234567890|am_revoked78901234567890123456789012|$INVALID"
  "7|inb_valid1234567890|am_expired12345678901234567890123456|$INVALID"
  "8|inb_disabled456789012|$VALID_KEY|$INVALID"
  "9|inb_valid1234567890|am_noscope12345678901234567890123456|535 5.7.8 Insufficient permissions"
  "10|invalid_inbox|$VALID_KEY|$INVALID"
  "11|inb_valid1234567890|am_limited12345678901234567890123456|$INVALID"
)

# USERNAME_FORM=address: each inbox by its email address (AgentMail's form).
as_form() {
  [ "$FORM" = address ] || { printf '%s' "$1"; return; }
  case "$1" in
    inb_valid1234567890) printf 'test@agentmail.dev' ;;
    inb_disabled456789012) printf 'disabled@agentmail.dev' ;;
    inb_doesnotexist00000) printf 'nobody@agentmail.dev' ;;
    *) printf '%s' "$1" ;;
  esac
}

command -v swaks >/dev/null || { echo "swaks is not installed (apt-get install swaks)" >&2; exit 2; }

run_one() {
  local number username password expected transcript actual
  IFS='|' read -r number username password expected <<<"$1"
  username=$(as_form "$username")
  transcript=$(swaks --server "$HOST:$PORT" --auth "$MECH" --auth-user "$username" \
    --auth-password "$password" --quit-after AUTH --timeout 15 2>&1)
  # The first reply after AUTH that is not a 334 challenge (swaks marks replies with "<").
  actual=$(printf '%s\n' "$transcript" | awk '/^ -> AUTH/ {seen=1; next}
    seen && /^<[-~*]* +[0-9][0-9][0-9] / && !/ 334 / {sub(/^<[-~*]* +/, ""); print; exit}')
  [ -n "$actual" ] || actual="(no AUTH reply: $(printf '%s\n' "$transcript" | grep -m1 -E '^\*\*\*' || echo 'connection failed'))"
  if [ "$actual" = "$expected" ]; then
    printf 'scenario %-2s PASS  %s\n' "$number" "$actual"
    return 0
  fi
  printf 'scenario %-2s FAIL  expected: %s\n                 actual:   %s\n' "$number" "$expected" "$actual"
  return 1
}

case "${1:-}" in
  all) selected=("${SCENARIOS[@]}") ;;
  [1-9] | 1[01]) selected=("${SCENARIOS[$(($1 - 1))]}") ;;
  *) echo "usage: $0 all|1..11" >&2; exit 2 ;;
esac

case "$FORM" in id | address) ;; *) echo "USERNAME_FORM is id or address" >&2; exit 2 ;; esac
echo "AUTH $MECH against $HOST:$PORT, inboxes by $FORM"
failed=0
for scenario in "${selected[@]}"; do
  run_one "$scenario" || failed=$((failed + 1))
done
echo "$(( ${#selected[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
