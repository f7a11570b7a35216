#!/bin/bash
# seed-epochs per second of W concurrent `lsearch run` processes on one SQLite study
L=${LSEARCH:-lsearch}
run() { # name workers extra...
  d=${TMPDIR:-/tmp}/lsearch-cores/$1; rm -rf $d; mkdir -p $d; cd $d
  w=$2; shift 2
  start=$(date +%s.%N)
  for i in $(seq $w); do $L run --trials 16 --quiet "$@" & done
  wait
  end=$(date +%s.%N)
  ${PYTHON:-python} - "$start" "$end" <<PY
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
s = optuna.load_study(study_name="digits", storage="sqlite:///lsearch.db")
se = sum(t.user_attrs.get("epochs_trained", 0) * len(t.user_attrs.get("seeds", [])) for t in s.trials)
wall = float(sys.argv[2]) - float(sys.argv[1])
print(f"{se} seed-epochs in {wall:.1f} s: {se / wall:.1f} per s; threads {sorted({t.user_attrs.get('threads') for t in s.trials})}")
PY
}
echo "one process:"; run one 1
echo "two processes, shared cores:"; run shared 2
echo "two processes, --threads 2 each:"; run over 2 --threads 2
