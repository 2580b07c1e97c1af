#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: creates the slice (a TPU VM, or a queued resource; spot or on-demand), copies this
# repository's committed code to every worker and installs it, runs the command on every worker with a gs:// workdir,
# and, when the slice is preempted, recreates it and runs the command again: the trainer resumes from
# <workdir>/checkpoints by itself.
#
#   launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE --accelerator_type TYPE --runtime_version VERSION
#                    --workdir gs://BUCKET/RUN [--project PROJECT] [--spot] [--queued] [--service_account EMAIL]
#                    [--extras EXTRAS] [--python VERSION] [--max_restarts N] [--settle_s S] [--poll_s S]
#                    [--delete_when_done] -- CMD [ARGS...]
#
# e.g. launch/tpu_vm.sh --name seg --zone us-central1-a --accelerator_type v5litepod-16 \
#        --runtime_version v2-alpha-tpuv5-lite --spot --workdir gs://my-bucket/encnet_pcontext \
#        -- python -m ctxseg_jax.main --config configs/encnet_pcontext.py --config.data.root=gs://my-bucket/pcontext
#
# Each worker runs `CMD ARGS... --workdir=WORKDIR` in its copy of the code (~/ctxseg_jax) with the Python of
# ~/ctxseg_venv (uv, Python --python, default 3.12: the project needs >= 3.11, the TPU images ship Ubuntu 22.04's
# 3.10), which holds the project (with [EXTRAS]) and jax[tpu]. JAX finds the other workers by itself on a TPU VM.
# After the command: a slice that is READY means the run is over (exit 0: done; otherwise that exit status, with no
# restart, since a failure on a healthy slice is not a preemption). A slice that is gone or in any other state was
# preempted: it is deleted, created again and the command rerun, at most --max_restarts times (default 10). The
# state is read --settle_s seconds (default 60) after the command ends: a preempted slice may still read READY for
# a moment, and the trainer exits 0 when a preemption's SIGTERM made it save. A queued resource is polled every
# --poll_s seconds (default 60) until it is ACTIVE; one still waiting from an earlier call is waited for, not
# replaced, and a READY TPU VM of that name is reused.
# --dry-run prints the commands of a first run on a new slice, then those of a restart, as comments.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE --accelerator_type TYPE --runtime_version VERSION
                        --workdir gs://BUCKET/RUN [--project PROJECT] [--spot] [--queued] [--service_account EMAIL]
                        [--extras EXTRAS] [--python VERSION] [--max_restarts N] [--settle_s S] [--poll_s S]
                        [--delete_when_done] -- CMD [ARGS...]
EOF
  [[ $# -gt 0 ]] && echo "error: $*" >&2
  exit 2
}
log() { echo "tpu_vm.sh: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dry_run=0 spot=0 queued=0 delete_when_done=0
name='' zone='' accelerator_type='' runtime_version='' workdir='' project='' service_account='' extras=''
python_version=3.12 max_restarts=10 settle_s=60 poll_s=60
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --delete_when_done) delete_when_done=1; shift ;;
    --name|--zone|--accelerator_type|--runtime_version|--workdir|--project|--service_account|--extras|--python|\
    --max_restarts|--settle_s|--poll_s)
      [[ $# -ge 2 ]] || usage "$1 needs a value"
      case $1 in
        --name) name=$2 ;;
        --zone) zone=$2 ;;
        --accelerator_type) accelerator_type=$2 ;;
        --runtime_version) runtime_version=$2 ;;
        --workdir) workdir=$2 ;;
        --project) project=$2 ;;
        --service_account) service_account=$2 ;;
        --extras) extras=$2 ;;
        --python) python_version=$2 ;;
        --max_restarts) max_restarts=$2 ;;
        --settle_s) settle_s=$2 ;;
        --poll_s) poll_s=$2 ;;
      esac
      shift 2 ;;
    -h|--help) print_help "$0"; exit 0 ;;
    --) shift; break ;;
    *) usage "unknown argument $1 (the command goes after --)" ;;
  esac
done
[[ $# -ge 1 ]] || usage 'missing the command after --'
command=("$@")
for option in name zone accelerator_type runtime_version workdir; do
  [[ -n ${!option} ]] || usage "--$option is required"
done
[[ $workdir == gs://?* ]] || usage "--workdir must be a gs:// path (every worker writes to it), got '$workdir'"
for option in max_restarts settle_s poll_s; do
  [[ ${!option} =~ ^[0-9]+$ ]] || usage "--$option must be a non-negative integer, got '${!option}'"
done

location=("--zone=$zone")
[[ -n $project ]] && location+=("--project=$project")
archive="${TMPDIR:-/tmp}/$name-ctxseg_jax.tar.gz"
package="\$HOME/ctxseg_jax${extras:+[$extras]}"
setup_script="set -e; rm -rf ~/ctxseg_jax; mkdir -p ~/ctxseg_jax; tar -xzf ~/ctxseg_jax.tar.gz -C ~/ctxseg_jax; \
python3 -m pip install --user --quiet uv; \
~/.local/bin/uv venv --quiet --allow-existing --python $python_version ~/ctxseg_venv; \
~/.local/bin/uv pip install --quiet --python ~/ctxseg_venv/bin/python -e \"$package\" \"jax[tpu]\""
run_script="cd ~/ctxseg_jax && . ~/ctxseg_venv/bin/activate && exec $(quote_command "${command[@]}" \
  "--workdir=$workdir")"


create_args=(--zone="$zone" --accelerator-type="$accelerator_type")
(( spot )) && create_args+=(--spot)
[[ -n $service_account ]] && create_args+=(--service-account="$service_account")
[[ -n $project ]] && create_args+=(--project="$project")
describe_node=(gcloud compute tpus tpu-vm describe "$name" "${location[@]}" --format='value(state)')
describe_queued=(gcloud compute tpus queued-resources describe "$name" "${location[@]}" --format='value(state.state)')

slice_state() {  # the TPU VM's state (READY when usable), empty when it does not exist
  "${describe_node[@]}" 2>/dev/null || true
}

wait_until_active() {
  if (( dry_run )); then
    echo "# every ${poll_s}s until ACTIVE: $(quote_command "${describe_queued[@]}")"
    return
  fi
  local state
  while :; do
    state=$("${describe_queued[@]}")
    case $state in
      ACTIVE) return ;;
      FAILED|SUSPENDING|SUSPENDED)
        log "queued resource $name is $state; gcloud compute tpus queued-resources describe $name" \
          "--zone=$zone says why"
        exit 1 ;;
    esac
    log "queued resource $name is $state; next look in ${poll_s}s"
    sleep "$poll_s"
  done
}

create_slice() {
  if (( queued )); then
    run_or_print gcloud compute tpus queued-resources create "$name" --node-id="$name" "${create_args[@]}" \
      --runtime-version="$runtime_version"
    wait_until_active
  else
    run_or_print gcloud compute tpus tpu-vm create "$name" "${create_args[@]}" --version="$runtime_version"
  fi
}

delete_slice() {
  if (( queued )); then
    run_or_print gcloud compute tpus queued-resources delete "$name" "${location[@]}" --force --quiet
  else
    run_or_print gcloud compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
  fi
}

recreate_slice() {  # after a preemption ($1: the TPU VM's state, empty when it is gone)
  if (( queued )); then
    delete_slice || true  # the queued resource stays, SUSPENDED, after its TPU VM is gone
  elif [[ -n $1 ]]; then
    delete_slice
  fi
  create_slice
}

first_slice() {  # reuses a READY slice or a queued resource still waiting; creates one otherwise
  local state queued_state
  state=$(slice_state)
  if [[ $state == READY ]]; then
    log "$name exists and is READY: running on it"
    return
  fi
  if (( queued )); then
    queued_state=$("${describe_queued[@]}" 2>/dev/null || true)
    case $queued_state in
      '') create_slice ;;
      WAITING_FOR_RESOURCES|PROVISIONING|CREATING|ACCEPTED)
        log "queued resource $name exists and is $queued_state: waiting for it"
        wait_until_active ;;
      *) log "queued resource $name exists and is $queued_state: deleting it"; recreate_slice "$state" ;;
    esac
  else
    [[ -n $state ]] && log "$name exists and is $state: deleting it"
    recreate_slice "$state"
  fi
}

install_code() {
  if (( ! dry_run )) && [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
    log "$repo has uncommitted changes; only the last commit is copied to the workers"
  fi
  run_or_print git -C "$repo" archive --format=tar.gz --output="$archive" HEAD
  run_or_print gcloud compute tpus tpu-vm scp "$archive" "$name:ctxseg_jax.tar.gz" --worker=all "${location[@]}"
  run_or_print gcloud compute tpus tpu-vm ssh "$name" --worker=all "${location[@]}" --command="$setup_script"
}

run_command() {
  run_or_print gcloud compute tpus tpu-vm ssh "$name" --worker=all "${location[@]}" --command="$run_script"
}

if (( dry_run )); then
  create_slice
  install_code
  run_command
  echo "# ${settle_s}s after the command, the slice's state: $(quote_command "${describe_node[@]}")"
  echo "# READY: done (or failed: the command's exit status); otherwise preempted, at most $max_restarts times:"
  delete_slice | sed 's/^/# /'
  echo '# and the commands above again, from the creation'
  exit 0
fi

first_slice
install_code
restarts=0
while :; do
  code=0
  run_command || code=$?
  sleep "$settle_s"  # a preempted slice may still read READY for a moment
  state=$(slice_state)
  if [[ $state == READY ]]; then
    if (( code == 0 )); then
      log "the command finished on $name"
      if (( delete_when_done )); then
        delete_slice
      fi
      exit 0
    fi
    log "the command failed with exit status $code on $name, which is READY: not a preemption, not restarting"
    exit "$code"
  fi
  if (( restarts >= max_restarts )); then
    log "$name is ${state:-gone} after $restarts restarts (--max_restarts $max_restarts): giving up; rerun this" \
      "script to continue from the last checkpoint in $workdir"
    exit 1
  fi
  restarts=$((restarts + 1))
  log "$name is ${state:-gone} (preempted; the command's exit status was $code): recreating it, restart" \
    "$restarts of $max_restarts; the run resumes from its last checkpoint in $workdir"
  recreate_slice "$state"
  install_code
done
