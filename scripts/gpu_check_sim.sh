#!/usr/bin/env bash
# A few RL iterations of the reach flow policy in the GPU simulators, for a GPU machine that has
# the extras installed (pip install -e '.[maniskill]' and/or '.[libero]' + LIBERO_ROOT set).
# Each check prints PASS, FAIL or SKIP (with the reason); the exit status is non-zero on a FAIL.
set -u
cd "$(dirname "$0")/.."
export MMPOST_HOME="${MMPOST_HOME:-$(mktemp -d)}"
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

check() {  # name, importable module, extra mmpost train arguments...
  local name=$1 module=$2; shift 2
  if ! python -c "import $module" 2>/dev/null; then echo "SKIP $name: python cannot import $module"; return; fi
  local out; out=$(mktemp -d)
  if timeout 900 mmpost train --task reach --output-dir "$out/run" --set sft.steps=0 --set rl.steps=3 \
       --set data.eval_size=16 --set eval.sampled=false "$@"; then
    python - "$out/run" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
print("iterations:", len(lines), "env steps/s:", [round(l["env/steps"] / l["seconds"]) for l in lines],
      "split (simulate, infer, update):", [(round(l["time/simulate"], 2), round(l["time/infer"], 2),
                                             round(l["time/update"], 2)) for l in lines])
PY
    echo "PASS $name"
  else
    echo "FAIL $name"; status=1
  fi
}

check "reach on GPU (torch policy, CPU MuJoCo)" mujoco --set env.num_envs=256 --set rl.batch_size=256
check "ManiSkill PickCube-v1 (state)" mani_skill --env maniskill:PickCube-v1 --set env.num_envs=256 \
  --set rl.batch_size=256 --set env.max_chunks=20
check "ManiSkill PickCube-v1 (rgb, timm encoder)" mani_skill --env maniskill:PickCube-v1 --set env.obs=image \
  --set env.num_envs=64 --set rl.batch_size=64 --set env.max_chunks=20
if [ -n "${LIBERO_ROOT:-}" ]; then
  check "LIBERO libero_spatial/0 (image)" libero --env libero:libero_spatial/0 --set env.obs=image \
    --set env.num_envs=8 --set env.workers=4 --set rl.batch_size=8 \
    --set env.chunk_len=5 --set env.max_chunks=44 --set flow.action_horizon=10 --set env.image_size=128
else
  echo "SKIP LIBERO: LIBERO_ROOT is not set (assets come from your local LIBERO copy)"
fi
exit $status
