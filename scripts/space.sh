# Sourced by setup.sh and test.sh: free disk space, and a memory-backed spare place when the disk is short.
# CI runners of this project's kind have been seen with a few hundred MB free on their disk (one
# set-up died with "No space left on device" installing triton), while /dev/shm had gigabytes.

# space_free_mb PATH: megabytes free on the filesystem holding PATH (0 when df cannot tell).
space_free_mb() {
  local mb
  mb=$(df -Pm "$1" 2>/dev/null | awk 'NR == 2 { print $4 }')
  echo "${mb:-0}"
}

# space_spare_dir NEED_MB: prints a directory with at least NEED_MB free beyond 4 GB left for the
# tests' own memory, or nothing. ATTNSUITE_SPARE_DIR names another candidate than /dev/shm.
space_spare_dir() {
  local dir=${ATTNSUITE_SPARE_DIR:-/dev/shm}
  if [ -d "$dir" ] && [ -w "$dir" ] && [ "$(space_free_mb "$dir")" -ge $(( $1 + 4096 )) ]; then
    echo "$dir"
  fi
}
