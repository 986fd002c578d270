#!/usr/bin/env bash
# Every GPU figure the README quotes, in one run of under 8 minutes on one GPU:
#   bash benchmarks/gpu_check.sh            # writes gpu_check.log (and to $OUT/ when set)
#
# 1. step_time           the bare network at 128^3, width 1, batch 8 (bf16 + channels_last_3d),
#                        and the recipe's augmentation as a share of that step
# 2. trainable_vs_model  the training loop against the bare step, same settings
# 3. trial_efficiency    one ds004199-sized trial (136 subjects: ~82 train / 27 validation in
#                        fold 0 of 5) at 128^3, width 1, 30 epochs, real checkpoints at the default
#                        interval: where its time goes (steps, validation, checkpoints, setup), with
#                        validation after every epoch and after every 2nd (--eval-every 2)
# 4. fusionsearch run    a whole SFSA search (--gpus 1 --size 128 --width 1) on 136 planted subjects
#                        at real scan sizes (synth --grid scanner), where Ray is installed
# 5. data_parallel_speedup  where the machine has 2 GPUs or more: one candidate on 1 and 2 GPUs
#                        (NCCL, synchronised batch norm), the speed-up and its efficiency per
#                        doubling, what cluster_model.py --dp-efficiency takes (skipped on one GPU)
#
# The machine needs torch with CUDA; MONAI, nibabel (and Ray for step 4) can come as wheels in
# .whl/ at the repository's root (pip download ... -d .whl; they are installed into /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log=${OUT:-.}/gpu_check.log
# Timeouts add up to 580 s (730 s with step 5, on 2 GPUs only); the whole script took 474 s on an
# H200 with 16 CPUs before step 3 ran 30 epochs twice (figures in the README). Step 3 makes its data
# once and warms up with a one-epoch trial: two 30-epoch trials took 22 s each there.
{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) $(nproc) CPUs"
  python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
  echo "== 1. step_time"
  timeout 80 python3 benchmarks/step_time.py --mask 1111 --size 128 --batch 8 --width 1 --steps 10 --repeats 3 \
    --augment standard
  echo "== 2. trainable_vs_model"
  timeout 100 python3 benchmarks/trainable_vs_model.py --size 128 --width 1 --batch 8 --n 120 --epochs 4 --steps 10
  echo "== 3. trial_efficiency (validation every epoch, then every 2nd)"
  timeout 150 python3 benchmarks/trial_efficiency.py --size 128 --width 1 --batch 8 --n 136 --epochs 30 \
    --checkpoint-interval 300 --eval-every 1 2
  if python3 -c "import ray" 2> /dev/null; then
    echo "== 4. fusionsearch run on scanner-sized volumes (1 mm T1w 193x229x193, 1x1x3 mm oblique FLAIR)"
    storage=$(mktemp -d)
    start=$SECONDS
    timeout 60 python3 -m fusionsearch.cli synth "$storage/data" --n 136 --size 64 --grid scanner > /dev/null \
      && echo "synth: $((SECONDS - start)) s, $(du -sh "$storage/data" | cut -f1)" \
      && timeout -s INT 190 python3 -m fusionsearch.cli run --data "$storage/data/manifest.csv" \
        --storage "$storage/runs" --name gpu --gpus 1 --size 128 --width 1 --epochs 4 --patience 4 \
        --folds 5 --fold 0 --no-unimodal 2>&1 | grep -v "^(\|^$" | tail -n 45
    ls "$storage/runs/gpu" 2> /dev/null && cp "$storage/runs/gpu/candidates.parquet" "${OUT:-.}/gpu_candidates.parquet" 2> /dev/null
  else
    echo "== 4. skipped: Ray is not installed here"
  fi
  gpus=$(nvidia-smi -L 2> /dev/null | wc -l)
  if [ "$gpus" -ge 2 ]; then
    echo "== 5. data_parallel_speedup (1 and 2 GPUs)"
    timeout 150 python3 benchmarks/data_parallel_speedup.py --workers 1 2 --size 128 --width 1 --n 136 --batch 8 \
      --epochs 3
  else
    echo "== 5. skipped: data_parallel_speedup needs 2 GPUs; this machine has $gpus"
  fi
} 2>&1 | tee "$log"
