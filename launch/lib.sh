# Shell functions the launch scripts share; sourced, not run.
# shellcheck shell=bash

# Prints its arguments as one command line that a shell reads back as the same arguments: an argument made of
# safe characters only as it is, any other in single quotes (the quoting of Python's shlex.join).
quote_command() {
  local arg safe='^[A-Za-z0-9_@%+=:,./-]+$' quoted=()
  for arg in "$@"; do
    if [[ $arg =~ $safe ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/\'\"\'\"\'}'")
    fi
  done
  echo "${quoted[*]}"
}

# Runs its arguments as a command, or only prints them (quote_command) when the caller's variable dry_run is 1.
run_or_print() {
  if (( ${dry_run:-0} )); then
    quote_command "$@"
  else
    "$@"
  fi
}

# Prints the comment block at the top of the script $1 (after the #! line; #SBATCH lines left out): its help.
print_help() {
  awk 'NR == 1 || /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}
