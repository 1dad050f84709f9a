# Sourced by ci_bench.sh and ci_report.sh: which files of an output folder a run may replace.
# A run replaces (and, before it starts, removes) the last run's outputs. Those are told from the
# user's own files by the folder's list of them, .attnsuite-outputs: one line per output, its name
# and a checksum of what the run left there ("-" while a run is writing it). A file with an output's
# name is the last run's only while its content is what that run wrote. Before this list, `OUT=.` in
# a folder holding the user's bench.json, report.html or plots/ deleted them, even when the run then
# stopped on a usage error; a list of names alone had still deleted a report.html or plots/ the user
# put there after a run (fresh-user trials). The checkout's own results/ (ignored by git, written by
# nothing else) needs no list.
OUTPUTS_LIST=.attnsuite-outputs
unset CDPATH  # its cd's below take relative folders, which an exported CDPATH would look up elsewhere

# _output_sum PATH: a checksum of a file's content, or of a folder's whole tree: every entry's kind,
# name and link target, and every file's content (files alone had let a folder or a link the user
# added to plots/ be deleted with it)
_output_sum() {
  if [ -d "$1" ]; then
    (cd "$1" && find . -mindepth 1 -printf '%y %p %l\n' | LC_ALL=C sort \
      && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum) | sha256sum | cut -c1-64
  else
    sha256sum < "$1" | cut -c1-64
  fi
}

# _listed DIR NAME: the checksum DIR's list holds for NAME (nothing when it is not listed). The list
# is read from stdin: as awk's argument a folder named like "tag=v1" is taken for an assignment
_listed() {
  [ -f "$1/$OUTPUTS_LIST" ] || return 0
  awk -v n="$2" '$1 == n { print $2; exit }' < "$1/$OUTPUTS_LIST" 2> /dev/null
}

# _is_default DIR DEFAULT_DIR: DIR is the checkout's results/ (a folder that cannot be entered is not:
# two failed lookups had compared equal, and such a folder skipped its list)
_is_default() {
  local a b
  a=$(cd "$1" 2> /dev/null && pwd -P) && b=$(cd "$2" 2> /dev/null && pwd -P) && [ "$a" = "$b" ]
}

# output_is_ours DIR DEFAULT_DIR NAME [RESUMING]: NAME in DIR is what an attnsuite run left there (or
# DIR is the checkout's results/). Something that does not exist is nobody's: the caller need not ask.
# "-" (being written) is left only by a run that died untrapped (SIGKILL): its file may be that run's
# partial output or one the user put there since, so only a resumed run (RESUMING non-empty), which
# carries that run on, takes it for its own.
output_is_ours() {
  _is_default "$1" "$2" && return 0
  local sum
  sum=$(_listed "$1" "$3")
  [ -n "$sum" ] && { { [ "$sum" = - ] && [ -n "${4:-}" ]; } || [ "$sum" = "$(_output_sum "$1/$3")" ]; }
}

# _write_list DIR NAME=SUM...: DIR's list with these entries replaced (SUM empty: the entry goes),
# written whole, then renamed into place
_write_list() {
  local dir=$1 list="$1/$OUTPUTS_LIST" entry
  shift
  {
    for entry in "$@"; do [ -n "${entry#*=}" ] && printf '%s %s\n' "${entry%%=*}" "${entry#*=}"; done
    if [ -f "$list" ]; then
      awk -v drop="$(printf '%s\n' "${@%%=*}")" \
        'BEGIN { n = split(drop, d, "\n"); for (i = 1; i <= n; i++) skip[d[i]] = 1 } !($1 in skip)' < "$list"
    fi
  } > "$list.tmp.$$" 2> /dev/null && mv -fT "$list.tmp.$$" "$list" 2> /dev/null && return 0
  rm -f "$list.tmp.$$"
  return 1
}

# claim_outputs WHO DIR DEFAULT_DIR RESUMING NAME...: before a run writes NAME... in DIR. Succeeds, and
# lists each NAME as being written, when every NAME that exists in DIR is the last run's (RESUMING
# non-empty: a resumed run, see output_is_ours); otherwise names the others on stderr, changes nothing
# and fails. DEFAULT_DIR, the checkout's results/, is never listed. The caller seals the list on every
# way out it can trap (seal_outputs): only an untrappable death leaves "-" behind.
claim_outputs() {
  local who=$1 dir=$2 default=$3 resuming=$4 name foreign=() unfinished=() entries=()
  shift 4
  _is_default "$dir" "$default" && return 0
  for name in "$@"; do
    if [ -e "$dir/$name" ] || [ -L "$dir/$name" ]; then
      if ! output_is_ours "$dir" "$default" "$name" "$resuming"; then
        if [ "$(_listed "$dir" "$name")" = - ]; then unfinished+=("$name"); else foreign+=("$name"); fi
      fi
    fi
    entries+=("$name=-")
  done
  if [ ${#foreign[@]} -gt 0 ]; then
    local see="see its $OUTPUTS_LIST"
    [ -f "$dir/$OUTPUTS_LIST" ] || see="the folder has no $OUTPUTS_LIST, the list a run keeps of its outputs: files of an older attnsuite, or copied here?"
    echo "$who: the output folder $dir already holds ${foreign[*]}, which no attnsuite run left there as it is ($see); a run replaces its outputs, so nothing was run or changed: give OUT=<another folder>, or move them away" >&2
    return 1
  fi
  if [ ${#unfinished[@]} -gt 0 ]; then
    local way="move them away (ci_report.sh makes them again from bench.json)"
    if [ "$who" = ci_bench ] && [ -e "$dir/bench.json.journal.jsonl" ]; then
      way="run the same command with --attn-resume to carry that run on, or move them away"
    elif [ "$who" = ci_bench ]; then
      # --attn-resume had been advised, and refused: "no such file (nothing to resume)"
      way="no case of that run had finished (it left no journal, bench.json.journal.jsonl), so there is nothing to resume: move them away (or delete them) and run again"
    fi
    echo "$who: the output folder $dir holds ${unfinished[*]}, which a $who.sh that did not finish was writing (killed?), or which was put there since; nothing was run or changed: $way" >&2
    return 1
  fi
  _write_list "$dir" "${entries[@]}" && return 0
  echo "$who: cannot write $dir/$OUTPUTS_LIST (the list of this folder's attnsuite outputs): nothing was run or changed" >&2
  return 1
}

# seal_on_exit DIR DEFAULT_DIR NAME...: after a claim, seal the list (seal_outputs) on every way out the
# script can trap. A run that stopped on a check after its claim, or whose terminal closed (SIGHUP),
# had left its outputs marked as being written, and the next run took a file the user put there since
# for its own and deleted it (a fresh-user trial); signals are ignored while it seals (one landing
# then had cut the seal short). A caller may trap INT, TERM or HUP otherwise later on.
seal_on_exit() {
  _SEAL_ARGS=("$@")
  trap 'trap "" INT TERM HUP; seal_outputs "${_SEAL_ARGS[@]}"' EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# seal_outputs DIR DEFAULT_DIR NAME...: after a run, list what it left under each NAME by checksum
# (an output it did not leave goes from the list)
seal_outputs() {
  local dir=$1 default=$2 name entries=()
  shift 2
  _is_default "$dir" "$default" && return 0
  for name in "$@"; do
    if [ -e "$dir/$name" ]; then entries+=("$name=$(_output_sum "$dir/$name")"); else entries+=("$name="); fi
  done
  _write_list "$dir" "${entries[@]}" || echo "attnsuite: cannot update $dir/$OUTPUTS_LIST: the next run into this folder will refuse to replace these outputs" >&2
}
