# Sourced by the scripts in scripts/: repository root as cwd, the venv's python, one torch thread,
# and ../shared/data as the data mirror when it exists and none is set.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ -z "${HISTOGRAPH_DATA_MIRROR:-}" ] && [ -d ../shared/data ]; then
  export HISTOGRAPH_DATA_MIRROR="$(cd ../shared/data && pwd)"
fi
