"""Reference trajectories from diffusers' own schedulers, for tune/tests/diffusion_samplers.rs.

Runs DDIMScheduler (eta 0 and 1) and DPMSolverMultistepScheduler (orders 1 and 2) on three
beta schedules and both prediction types, with a fixed model function and fixed noise that the
Rust test computes identically, and writes every intermediate sample to
tune/tests/fixtures/diffusers_samplers.json. Run by scripts/diffusers-reference.sh.
"""
import json
import math
import sys

import diffusers
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

DIM = 16
SCHEDULES = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}


def start_noise():
    return torch.tensor([1.3 * math.sin(1.7 * i + 0.3) for i in range(DIM)], dtype=torch.float32)


def step_noise(k):
    return torch.tensor([math.cos(0.9 * i + 1.1 * k) for i in range(DIM)], dtype=torch.float32)


def model(x, t, prediction):
    # Same formula in the Rust test; t is the integer training timestep.
    if prediction == "sample":
        return torch.tanh(0.5 * x + 0.001 * t) * 0.8
    return torch.sin(x + 0.002 * t) * 0.9


def run_ddim(sched, steps, eta, prediction):
    s = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=prediction, **sched)
    s.set_timesteps(steps)
    x = start_noise()
    out = []
    for k, t in enumerate(s.timesteps):
        noise = step_noise(k)
        x = s.step(model(x, int(t), prediction), t, x, eta=eta, variance_noise=noise).prev_sample
        out.append(x.tolist())
    return [int(t) for t in s.timesteps], out


def run_dpm(sched, steps, order, prediction):
    s = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=order, prediction_type=prediction, **sched
    )
    s.set_timesteps(steps)
    x = start_noise()
    out = []
    for t in s.timesteps:
        x = s.step(model(x, int(t), prediction), t, x).prev_sample
        out.append(x.tolist())
    return [int(t) for t in s.timesteps], out


def main(path):
    cases = []
    for name, sched in SCHEDULES.items():
        for prediction in ["sample", "epsilon"]:
            for steps in [3, 5, 10, 20]:
                for eta in [0.0, 1.0]:
                    ts, xs = run_ddim(sched, steps, eta, prediction)
                    cases.append(dict(sampler="ddim", schedule=name, prediction=prediction,
                                      steps=steps, eta=eta, timesteps=ts, samples=xs))
                for order in [1, 2]:
                    ts, xs = run_dpm(sched, steps, order, prediction)
                    cases.append(dict(sampler="dpm_solver++", schedule=name, prediction=prediction,
                                      steps=steps, order=order, timesteps=ts, samples=xs))
    with open(path, "w") as f:
        json.dump(dict(diffusers=diffusers.__version__, torch=torch.__version__, dim=DIM,
                       cases=cases), f)
    print(f"{len(cases)} cases from diffusers {diffusers.__version__} -> {path}")


if __name__ == "__main__":
    main(sys.argv[1])
