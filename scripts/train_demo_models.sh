#!/usr/bin/env bash
# Reproduce the demo models in pcdms_core/demo_models/ from scratch on a CPU (about 2 hours on 2 cores; docs/demo-models.md
# models, lists the time of each step). Every run resumes from its newest checkpoint if interrupted. Run from the
# repository root; needs accelerate (requirements-dev.txt).
set -euo pipefail
RUNS=${RUNS:-runs}
D=pcdms_core/demo_models
py() { PYTHONPATH=. python -m pcdms_core "$@"; }
# two training processes of one thread each (data-parallel on the CPU): about 1.2 times the speed of one
# process with two threads at these sizes; --batch-size is per process (8 + 8 = 16)
ddp() { PYTHONPATH=. python -m torch.distributed.run --nproc_per_node 2 -m pcdms_core "$@"; }

# stand-in image encoders: small ViTs frozen at a seeded random initialisation
py init-encoders --clip $D/clip_vision/pcdms_demo_clip.safetensors --dino $D/clip_vision/pcdms_demo_dinov2.safetensors
# the VAE (downsamples by 4), at the 64 x 64 the demo works at: 5000 steps at 8e-4, then 400 at 1e-4 on pairs it
# has not seen (--seed 1); in bf16 autocast on a CPU with bf16 units (AMX or AVX512-BF16: about 30 minutes), in
# fp32 on others (there bf16 takes PyTorch's slow reference path; fp32 took 1.4 times as long on the AMX CPU)
VAE_MP=${VAE_MP:-$(grep -qw -e amx_bf16 -e avx512_bf16 /proc/cpuinfo 2>/dev/null && echo bf16 || echo no)}
ddp train vae --size 64 --out $RUNS/vae --steps 5000 --batch-size 8 --lr 8e-4 --save-every 500 --mixed-precision $VAE_MP
ddp train vae --init $RUNS/vae/vae.safetensors --size 64 --out $RUNS/vae_lowlr --seed 1 --steps 400 --batch-size 8 \
   --lr 1e-4 --save-every 200 --mixed-precision $VAE_MP --export $D/vae/pcdms_demo_vae.safetensors
# stage 1: the prior
py train prior --out $RUNS/prior --steps 1500 --batch-size 32 --lr 3e-4 --save-every 500 \
   --export $D/pcdms/pcdms_demo_prior.safetensors
# stage 2, paper variant (takes the prior's embedding): pairs from a pool of 8000 whose encodings are kept, 4000 steps
# at 5e-4; then 1000 at 1e-4 on a pool of 4000 pairs it has not seen (--seed 1)
ddp train inpaint --out $RUNS/inpaint --pool 8000 --steps 4000 --batch-size 8 --lr 5e-4 --save-every 500 --ema 0.999
ddp train inpaint --init $RUNS/inpaint/inpaint.safetensors --out $RUNS/inpaint_lowlr --pool 4000 --seed 1 --steps 1000 \
   --batch-size 8 --lr 1e-4 --save-every 500 --ema 0.999 --export $D/pcdms/pcdms_demo_inpaint.safetensors
# stage 3: stage-2 outputs for 1200 training pairs, then refining started from stage 2's UNet (as the official
# stage 3 starts from SD 2.1's), half of each batch from fresh pairs with made-up coarse images (--degrade 0.5):
# 2800 steps at 3e-4, then 800 at 1e-4
py make-coarse --inpaint $RUNS/inpaint_lowlr/inpaint.safetensors --out $RUNS/coarse.pt --count 1200 --steps 30 \
   --scheduler euler_ancestral --guidance 1.5
ddp train refine --coarse $RUNS/coarse.pt --init $RUNS/inpaint_lowlr/inpaint.safetensors --out $RUNS/refine \
   --degrade 0.5 --steps 2800 --batch-size 8 --lr 3e-4 --save-every 500 --ema 0.999
ddp train refine --coarse $RUNS/coarse.pt --init $RUNS/refine/refine.safetensors --out $RUNS/refine_lowlr \
   --degrade 0.5 --steps 800 --batch-size 8 --lr 1e-4 --save-every 400 --ema 0.999 \
   --export $D/pcdms/pcdms_demo_refine.safetensors
# stage 2 without the prior: from the paper variant's weights (its class embedding dropped), 1500 steps at
# 1e-4 on a pool of 6000 pairs neither has seen (--seed 2)
ddp train inpaint --variant noprior --init $RUNS/inpaint_lowlr/inpaint.safetensors --out $RUNS/inpaint_noprior --pool 6000 \
   --seed 2 --steps 1500 --batch-size 8 --lr 1e-4 --save-every 500 --ema 0.999 \
   --export $D/pcdms/pcdms_demo_inpaint_noprior.safetensors
# the stage ablation on 200 held-out pairs (docs/demo-models.md)
py evaluate --out $RUNS/eval --pairs 200
