#!/usr/bin/env bash
# Runs N processes of one command on this machine as one multi-process JAX job on the CPU: the path the
# multi-host code takes on a TPU slice or a GPU cluster, on a laptop.
#
#   launch/local.sh [--dry-run] [--devices_per_process K] [--port P] [--log_dir DIR] N -- CMD [ARGS...]
#
# Process i runs CMD ARGS... --coordinator_address=localhost:P --num_processes=N --process_id=i with
# JAX_PLATFORMS=cpu and --xla_force_host_platform_device_count=K appended to XLA_FLAGS (K default: the CPUs this
# script may use, nproc, divided by N, at least 1; P default: a free port). Each process's stdout and stderr are
# printed, merged, on this script's stdout, every line prefixed "[p<i>] "; with --log_dir they are also written,
# unprefixed, to DIR/process_<i>.log. SIGTERM and SIGINT are forwarded to every process, then the script waits for
# them. Exit status: 0 when every process exits 0, otherwise the first non-zero status in process order.
# --dry-run prints the N command lines, environment assignments included, and exits 0.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  echo 'usage: launch/local.sh [--dry-run] [--devices_per_process K] [--port P] [--log_dir DIR] N -- CMD [ARGS...]' >&2
  [[ $# -gt 0 ]] && echo "error: $*" >&2
  exit 2
}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

dry_run=0
devices_per_process=''
port=''
log_dir=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --devices_per_process|--port|--log_dir)
      [[ $# -ge 2 ]] || usage "$1 needs a value"
      case $1 in
        --devices_per_process) devices_per_process=$2 ;;
        --port) port=$2 ;;
        --log_dir) log_dir=$2 ;;
      esac
      shift 2 ;;
    --devices_per_process=*) devices_per_process=${1#*=}; shift ;;
    --port=*) port=${1#*=}; shift ;;
    --log_dir=*) log_dir=${1#*=}; shift ;;
    -h|--help) print_help "$0"; exit 0 ;;
    --) usage 'the number of processes N comes before --' ;;
    -*) usage "unknown option $1" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage 'missing N, the number of processes'
is_count "$1" || usage "N must be a positive integer, got '$1'"
num_processes=$1
shift
[[ $# -ge 1 && $1 == -- ]] || usage "expected -- after N, then the command (got '${1:-nothing}')"
shift
[[ $# -ge 1 ]] || usage 'missing the command after --'
command=("$@")

if [[ -z $devices_per_process ]]; then
  devices_per_process=$(( $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN) / num_processes ))
  (( devices_per_process >= 1 )) || devices_per_process=1
fi
is_count "$devices_per_process" || usage "--devices_per_process must be a positive integer, got '$devices_per_process'"
if [[ -z $port ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
fi
if ! [[ $port =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
  usage "--port must be in 1..65535, got '$port'"
fi

xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices_per_process"
process_command() {  # the command line of process $1, into the array `line`
  line=(env JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" "${command[@]}" "--coordinator_address=localhost:$port"
        "--num_processes=$num_processes" "--process_id=$1")
}

if (( dry_run )); then
  for (( i = 0; i < num_processes; i++ )); do
    process_command "$i"
    echo "JAX_PLATFORMS=cpu XLA_FLAGS=$(quote_command "$xla_flags") $(quote_command "${line[@]:3}")"
  done
  exit 0
fi

if [[ -n $log_dir ]]; then
  mkdir -p "$log_dir"
fi
fifo_dir=$(mktemp -d "${TMPDIR:-/tmp}/local_sh.XXXXXX")
pids=()
readers=()

relay() {  # copies the lines of stdin to stdout, each prefixed with $1, and as they are to the file $2
  local line
  trap '' TERM INT  # a signal to the whole process group: the processes still write here while they save
  exec 3>"$2"
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s%s\n' "$1" "$line"
    printf '%s\n' "$line" >&3
  done
}

# shellcheck disable=SC2329  # called by the traps below
forward() {  # sends signal $1 to every process still running
  local pid
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'rm -rf "$fifo_dir"' EXIT

for (( i = 0; i < num_processes; i++ )); do
  mkfifo "$fifo_dir/$i"
  log_file=/dev/null
  [[ -n $log_dir ]] && log_file="$log_dir/process_$i.log"
  relay "[p$i] " "$log_file" <"$fifo_dir/$i" &
  readers+=($!)
  process_command "$i"
  # Each process in its own process group (job control on while it starts): a Ctrl-C at the terminal reaches this
  # script alone, which forwards it once, and the processes keep Python's default SIGINT handler (background jobs
  # of a shell without job control would start with SIGINT ignored).
  set -m
  "${line[@]}" >"$fifo_dir/$i" 2>&1 </dev/null &
  pids+=($!)
  set +m
done

status=0
for (( i = 0; i < num_processes; i++ )); do
  # `wait` returns early when a trapped signal arrives; wait again until the process has really exited.
  while :; do
    code=0
    wait "${pids[i]}" || code=$?
    kill -0 "${pids[i]}" 2>/dev/null || break
  done
  if (( code != 0 && status == 0 )); then
    status=$code
  fi
done
for reader in "${readers[@]}"; do
  wait "$reader" || true
done
exit "$status"
