#!/bin/bash
# Example Slurm batch script for pintopt. Submit with: sbatch scripts/slurm/pintopt.sh run.toml
# The job resumes from its checkpoint when it is requeued or resubmitted after a time-out. At the
# time limit Slurm sends SIGTERM to every task (then SIGKILL after KillWait, 30 s by default):
# pintopt stops within 10 iterations, writes a final checkpoint and exits with status 4, which
# this script turns into a requeue.
#SBATCH --job-name=pintopt
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
#SBATCH --requeue
#SBATCH --output=pintopt-%j.out
set -euo pipefail
config=${1:-run.toml}
ckpt=${CHECKPOINT:-pintopt-run.h5}
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
# A checkpoint every 100 iterations and every 10 minutes; keep the previous two as well.
# With a trap the shell itself survives the SIGTERM and runs the requeue after srun returns.
trap 'echo "pintopt.sh: SIGTERM, waiting for the final checkpoint"' TERM
status=0
if [[ -f $ckpt ]]; then
  srun python -m pintopt resume "$ckpt" || status=$?
else
  srun python -m pintopt train --config "$config" --checkpoint "$ckpt" \
    --checkpoint-every 100 --checkpoint-seconds 600 --keep-last 3 || status=$?
fi
if [[ $status -eq 4 ]]; then  # interrupted, checkpoint written: continue in a new allocation
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
