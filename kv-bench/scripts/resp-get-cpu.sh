#!/usr/bin/env bash
# CPU time per RESP GET (server utime+stime over N GETs), for each binary given; alternating rounds.
# Usage: kv-bench/scripts/resp-get-cpu.sh BIN... (ROUNDS, N from the environment) (a BIN "redis" means redis-server)
set -u
ROUNDS=${ROUNDS:-3}; N=${N:-2000000}; port=16400; pids=(); ports=(); dirs=()
for b in "$@"; do
  d=$(mktemp -d /var/tmp/kvcpu.XXXX); dirs+=($d)
  if [ "$b" = redis ]; then redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null 2>&1 &
  else $b --resp 127.0.0.1:$port --listen 127.0.0.1:0 --data-dir $d --log-level warn >/dev/null 2>&1 & fi
  pids+=($!); ports+=($port); port=$((port+1))
done
sleep 2
for p in "${ports[@]}"; do redis-benchmark -p $p -t set -n 1000000 -r 100000 -d 100 -c 50 -P 16 -q >/dev/null 2>&1; done
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for r in $(seq $ROUNDS); do for i in "${!ports[@]}"; do
  t0=$(ticks ${pids[$i]})
  out=$(redis-benchmark -p ${ports[$i]} -t get -c 50 -P 16 -d 100 -n $N -r 100000 -q | tr "\r" "\n" | grep -a "per second" | tail -n 1)
  t1=$(ticks ${pids[$i]})
  echo "round $r $(basename $(dirname ${@:$((i+1)):1}))/$(basename ${@:$((i+1)):1}) load $(cut -d' ' -f1 /proc/loadavg): $(awk -v t=$((t1-t0)) -v n=$N 'BEGIN{printf "%.3f us CPU/GET", t*10000/n}') | $out"
done; done
kill "${pids[@]}"; wait; rm -rf "${dirs[@]}"
