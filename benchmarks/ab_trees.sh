#!/bin/bash
# A/B of two trees on one machine start: run the same command in an earlier commit's tree and in this working tree,
# alternately, so a small change is not hidden by the several percent that machine starts differ by.
#
#   It is meant for the device: make the old tree here first (it travels with the working tree if the
#   folder is carried), e.g.  mkdir -p .ab/old && git archive 032adb2 | tar -x -C .ab/old
#   then on the GPU:          bash benchmarks/ab_trees.sh .ab/old 2 python3 benchmarks/profile_decode.py --int8
#
# Arguments: OLD_TREE ROUNDS COMMAND...  Each round runs COMMAND in the old tree, then in this one, each with its own
# kernels/ importable as gptoss_kernels and OUT set to $OUT/old or $OUT/new (the benchmarks write there by default);
# every output line is prefixed by the tree's name.
set -u
old=$(cd "$1" && pwd); rounds=$2; shift 2
new=$(pwd)
for tree in old new; do
  mkdir -p "/tmp/ab_$tree"
  src=$([ $tree = old ] && echo "$old" || echo "$new")
  ln -sfn "$src/kernels" "/tmp/ab_$tree/gptoss_kernels"
done
for ((i = 1; i <= rounds; i++)); do
  for tree in old new; do
    src=$([ $tree = old ] && echo "$old" || echo "$new")
    echo "== $tree (round $i): $*"
    out="${OUT:-/tmp/ab}/$tree"
    mkdir -p "$out"
    # a script only this tree has (a new benchmark) runs from here, against the old tree's packages
    args=()
    for a in "$@"; do
      if [[ $a == *.py && ! -e $src/$a && -e $new/$a ]]; then args+=("$new/$a"); else args+=("$a"); fi
    done
    (cd "$src" && OUT="$out" PYTHONPATH="$src:/tmp/ab_$tree${PYTHONPATH:+:$PYTHONPATH}" "${args[@]}" 2>&1 | sed "s/^/[$tree] /")
  done
done
