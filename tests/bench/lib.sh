# Shared by the benchmark scripts: free loopback ports and waiting for a RESP server.

# A port on 127.0.0.1 that nothing listens on.
free_port() {
  local p
  while :; do
    p=$(( (RANDOM << 15 | RANDOM) % 30000 + 20000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# Waits up to 20 s for PONG on a port.
wait_ping() {
  local port=$1 deadline=$((SECONDS + 20))
  until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
    [ $SECONDS -lt $deadline ] || { echo "no PONG on port $port" >&2; exit 1; }
    sleep 0.1
  done
}

# Resident memory of a process, in kB.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
