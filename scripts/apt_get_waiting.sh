# Sourced by scripts/setup.sh (and its test): `apt_get_waiting ARGS…` runs apt-get ARGS and, when
# another apt-get, apt or dpkg holds a lock, waits for it instead of failing with exit 100.
#
# apt's own DPkg::Lock::Timeout only covers the dpkg frontend lock; `apt-get update` fails at
# once on the lists lock (/var/lib/apt/lists/lock), and so does a download on the archives lock.
# So the whole command is retried while its error is a lock, for up to APT_LOCK_TIMEOUT seconds
# (default 900). Set SUDO=(sudo) to run apt-get through sudo.

APT_LOCK_TIMEOUT=${APT_LOCK_TIMEOUT:-900}

apt_get_waiting() {
  local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) said=0 rc out
  while :; do
    rc=0
    out=$(${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout="$((deadline - SECONDS > 0 ? deadline - SECONDS : 0))" "$@" 2>&1) || rc=$?
    [ "$rc" = 0 ] && return 0
    if [ "$SECONDS" -lt "$deadline" ] && grep -qE "Could not get lock|Unable to lock|Unable to acquire the dpkg frontend lock" <<<"$out"; then
      if [ "$said" = 0 ]; then
        echo "setup: another apt-get/dpkg holds its lock ($(grep -m1 -oE 'held by process [0-9]+ \([^)]*\)' <<<"$out" || echo 'busy')); waiting up to ${APT_LOCK_TIMEOUT}s"
        said=1
      fi
      sleep 3
      continue
    fi
    printf '%s\n' "$out" >&2
    return "$rc"
  done
}
