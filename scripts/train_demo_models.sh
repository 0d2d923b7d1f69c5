#!/usr/bin/env bash
# Reproduce the demo models in demo_models/ from scratch on a CPU (about 6 hours on 2 cores; README, Demo models,
# lists the time of each step). Every run resumes from its newest checkpoint if interrupted. Run from the
# repository root; needs accelerate (requirements-dev.txt).
set -euo pipefail
RUNS=${RUNS:-runs}
D=demo_models
py() { PYTHONPATH=. python -m pcdms_core "$@"; }

# stand-in image encoders: small ViTs frozen at a seeded random initialisation
py init-encoders --clip $D/clip_vision/pcdms_demo_clip.safetensors --dino $D/clip_vision/pcdms_demo_dinov2.safetensors
# the VAE (downsamples by 4), on 64 x 64 crops of synthetic people drawn at 128 x 128
py train vae --size 128 --out $RUNS/vae --steps 4000 --batch-size 16 --lr 8e-4 --save-every 500 \
   --export $D/vae/pcdms_demo_vae.safetensors
# stage 1: the prior
py train prior --out $RUNS/prior --steps 1500 --batch-size 32 --lr 3e-4 --save-every 500 \
   --export $D/pcdms/pcdms_demo_prior.safetensors
# stage 2, demo variant (no prior)
py train inpaint --variant demo --out $RUNS/inpaint_noprior --steps 2000 --batch-size 16 --lr 5e-4 --save-every 500 \
   --ema 0.999 --export $D/pcdms/pcdms_demo_inpaint_noprior.safetensors
# stage 2, paper variant (takes the prior's embedding), in two legs: stage 3 first learned on the outputs of the
# 3000-step model, then was fine-tuned on those of the final one. (The shipped file ran its first 1000 steps
# without --ema, which was added when it resumed; runs resume exactly otherwise.)
py train inpaint --out $RUNS/inpaint --steps 3000 --batch-size 16 --lr 5e-4 --save-every 500 --ema 0.999
# stage 3: refining, on stage-2 outputs for training pairs
py make-coarse --inpaint $RUNS/inpaint/inpaint.safetensors --out $RUNS/coarse_3000.pt --count 1500 --steps 10
py train refine --coarse $RUNS/coarse_3000.pt --out $RUNS/refine --steps 2500 --batch-size 16 --lr 5e-4 \
   --save-every 500 --ema 0.999
py train inpaint --out $RUNS/inpaint --steps 5000 --batch-size 16 --lr 5e-4 --save-every 500 --ema 0.999 \
   --export $D/pcdms/pcdms_demo_inpaint.safetensors
py make-coarse --inpaint $D/pcdms/pcdms_demo_inpaint.safetensors --out $RUNS/coarse.pt --count 1200 --steps 30 \
   --scheduler euler_ancestral --guidance 1.5
py train refine --coarse $RUNS/coarse.pt --out $RUNS/refine --steps 4000 --batch-size 16 --lr 5e-4 --save-every 500 \
   --ema 0.999 --export $RUNS/refine/refine.safetensors
# stage 3, last leg: from those (averaged) weights at a fifth of the learning rate, on the same stage-2 outputs
py train refine --coarse $RUNS/coarse.pt --out $RUNS/refine_anneal --init $RUNS/refine/refine.safetensors --steps 2000 \
   --batch-size 16 --lr 1e-4 --save-every 500 --ema 0.999 --export $RUNS/refine_anneal/refine_fp16.safetensors
# stage 3, fourth leg: half of each batch from fresh pairs with made-up coarse images (--degrade), so that it stops
# learning the 1200 stage-2 outputs by heart
py train refine --coarse $RUNS/coarse.pt --out $RUNS/refine_degrade --init $RUNS/refine_anneal/refine_fp16.safetensors \
   --degrade 0.5 --steps 5000 --batch-size 16 --lr 2e-4 --save-every 500 --ema 0.999 \
   --export $RUNS/refine_degrade/refine_fp16.safetensors
# the VAE's decoder, fine-tuned at the 64 x 64 the demo works at (the encoder, so the latents the UNets learned,
# stay as they are). Here, because the stage-2 outputs above were decoded by the first decoder.
py train vae --init $D/vae/pcdms_demo_vae.safetensors --decoder-only --out $RUNS/vae_decoder --steps 1500 --batch-size 16 \
   --lr 3e-4 --save-every 250 --export $D/vae/pcdms_demo_vae.safetensors
# stage 2, paper variant, third leg: a fifth of the learning rate on pairs it has not seen (--seed 1)
py train inpaint --init $D/pcdms/pcdms_demo_inpaint.safetensors --out $RUNS/inpaint_lowlr --steps 2000 --batch-size 16 \
   --lr 1e-4 --save-every 500 --ema 0.999 --seed 1 --export $D/pcdms/pcdms_demo_inpaint.safetensors
# stage 3, fifth leg: on the outputs of that stage 2, decoded by the new decoder
py make-coarse --inpaint $D/pcdms/pcdms_demo_inpaint.safetensors --out $RUNS/coarse2.pt --count 1200 --steps 30 \
   --scheduler euler_ancestral --guidance 1.5
py train refine --coarse $RUNS/coarse2.pt --out $RUNS/refine_final --init $RUNS/refine_degrade/refine_fp16.safetensors \
   --degrade 0.5 --steps 1500 --batch-size 16 --lr 2e-4 --save-every 500 --ema 0.999 \
   --export $D/pcdms/pcdms_demo_refine.safetensors
# stage 2, demo variant, three more legs on pairs it has not seen: 2000 steps at 5e-4 (--seed 2), then twice 1500 at
# 1e-4 (--seed 3, --seed 4)
py train inpaint --variant demo --init $D/pcdms/pcdms_demo_inpaint_noprior.safetensors --out $RUNS/inpaint_noprior2 \
   --steps 2000 --batch-size 16 --lr 5e-4 --save-every 500 --ema 0.999 --seed 2 \
   --export $D/pcdms/pcdms_demo_inpaint_noprior.safetensors
py train inpaint --variant demo --init $D/pcdms/pcdms_demo_inpaint_noprior.safetensors --out $RUNS/inpaint_noprior3 \
   --steps 1500 --batch-size 16 --lr 1e-4 --save-every 500 --ema 0.999 --seed 3 \
   --export $D/pcdms/pcdms_demo_inpaint_noprior.safetensors
py train inpaint --variant demo --init $D/pcdms/pcdms_demo_inpaint_noprior.safetensors --out $RUNS/inpaint_noprior4 \
   --steps 1500 --batch-size 16 --lr 1e-4 --save-every 500 --ema 0.999 --seed 4 \
   --export $D/pcdms/pcdms_demo_inpaint_noprior.safetensors
# the stage ablation on 200 held-out pairs (README, Demo models)
py evaluate --out $RUNS/eval --pairs 200
