# Sourced by ci_bench.sh and ci_report.sh: which files of an output folder a run may replace.
# A run replaces (and, before it starts, removes) the last run's outputs. Those are told from the
# user's own files by the folder's list of them, .attnsuite-outputs, which every run writes before it
# writes anything else. Before this list, `OUT=.` in a folder holding the user's bench.json,
# report.html or plots/ deleted them, even when the run then stopped on a usage error (a fresh-user
# trial). The checkout's own results/ (ignored by git, written by nothing else) needs no list.
OUTPUTS_LIST=.attnsuite-outputs

# claim_outputs WHO DIR DEFAULT_DIR NAME...: succeeds, and adds NAME... to DIR's list, when every
# NAME that exists in DIR is listed there (or DIR is DEFAULT_DIR); otherwise names the others on
# stderr, changes nothing and fails. DEFAULT_DIR, the checkout's results/, is never listed.
claim_outputs() {
  local who=$1 dir=$2 default=$3 name foreign=() listed
  shift 3
  local list="$dir/$OUTPUTS_LIST"
  # the checkout's results/ is written by nothing else: no list there (none for CI to upload)
  [ "$(cd "$dir" 2> /dev/null && pwd -P)" = "$(cd "$default" 2> /dev/null && pwd -P)" ] && return 0
  for name in "$@"; do
    if [ -e "$dir/$name" ] || [ -L "$dir/$name" ]; then
      grep -qxF -- "$name" "$list" 2> /dev/null || foreign+=("$name")
    fi
  done
  if [ ${#foreign[@]} -gt 0 ]; then
    echo "$who: the output folder $dir already holds ${foreign[*]}, which no attnsuite run wrote there (they are not in its $OUTPUTS_LIST); a run replaces its outputs, so nothing was run or changed: give OUT=<another folder>, or move them away" >&2
    return 1
  fi
  # the union of the names listed and these, written whole, then renamed into place
  listed=$( { [ -f "$list" ] && cat "$list"; printf '%s\n' "$@"; } | sort -u)
  if ! printf '%s\n' "$listed" > "$list.tmp.$$" || ! mv -f "$list.tmp.$$" "$list"; then
    rm -f "$list.tmp.$$"
    echo "$who: cannot write $list (the list of this folder's attnsuite outputs): nothing was run or changed" >&2
    return 1
  fi
}
