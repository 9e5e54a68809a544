# Sourced by the shell tests: helpers shared by them.

# nm_test_text FILE SEED [WORDS]: a deterministic English-like text of WORDS
# words (default 9000) from a small word list, for tests that must not depend
# on Tiny Shakespeare.
nm_test_text() {
  awk -v seed="$2" -v n="${3:-9000}" 'BEGIN { srand(seed);
    split("the king and queen of a fair night shall speak my lord with love to thee we are not what good sir come hither death is sweet but time war", w, " ");
    for (i = 0; i < n; i++) { printf "%s%s", w[int(rand() * 31) + 1], (i % 11 == 10) ? ".\n" : " " } }' >"$1"
}

# One line per check, TAP-like; a failed check makes the script exit non-zero
# through `exit $fail` at its end.
fail=0
ok() { echo "ok - $1"; }
bad() { echo "not ok - $1"; fail=1; }

# nm_test_workdir: a fresh temporary directory in $work, removed on exit.
nm_test_workdir() {
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
}

# nm_slurm_conf_common: the slurm.conf lines the Slurm tests share (no
# authentication, root daemons, no cgroups, no task binding, whole CPUs,
# requeue allowed)
nm_slurm_conf_common() {
  printf '%s\n' AuthType=auth/none CredType=cred/none SlurmUser=root SlurmdUser=root \
    ProctrackType=proctrack/linuxproc TaskPlugin=task/none MpiDefault=none ReturnToService=2 \
    SchedulerType=sched/builtin SelectType=select/cons_tres SelectTypeParameters=CR_CPU JobRequeue=1
}
