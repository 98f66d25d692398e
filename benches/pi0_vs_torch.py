#!/usr/bin/env python3
"""Rudder vs PyTorch on the same pi0-architecture policy, side by side in one run.

Builds transformers' PI0ForConditionalGeneration at a larger size than the hf-tiny fixture (SigLIP
6 x 384 on two 112 px cameras = 128 image tokens, Gemma prefix 6 x 512, action expert 6 x 256,
chunk 50, 10 Euler steps, fp32), saves it with save_pretrained, times PyTorch's `sample_actions`
(2 threads, inference mode, prefix KV cache reused across steps as transformers does), then times
`rudder bench vla` on the very same files with the same prompt ids, and prints both with the ratio
rudder / torch. Medians (p50) of N runs after 2 warm-ups.

Usage: python benches/pi0_vs_torch.py [--rudder target/release/rudder] [--runs 20]
"""
import argparse, json, os, statistics, subprocess, tempfile, time

import torch
import transformers as T

PROMPT = "pick up the black bowl and place it on the plate"
VOCAB = 1024
IMAGE_TOKEN = VOCAB - 1


def byte_tokens(prompt, limit, max_tokens=48):
    # rudder's byte-level prompt mapping (policy/src/prompt.rs): [BOS] + 3 + byte, cut to 48.
    span = limit - 3
    ids = [2] + [3 + b % span for b in (prompt.strip() + "\n").encode()]
    return ids[:max_tokens]


# transformers v5 saves a fresh PI0 in its new module layout; real Hub checkpoints (lerobot/pi0*)
# use the legacy one, which v5 still loads and rudder reads (as ../shared/tools/make_hf_fixtures.py
# does for the fixture).
HUB_LAYOUT = [
    (r"^paligemma_with_expert\.paligemma\.model\.language_model\.model\.",
     "paligemma_with_expert.paligemma.model.language_model."),
    (r"^paligemma_with_expert\.paligemma\.model\.vision_tower\.",
     "paligemma_with_expert.paligemma.model.vision_tower.vision_model."),
]


def to_hub_layout(path):
    import re
    from safetensors.torch import load_file, save_file
    sd = load_file(path)

    def ren(k):
        for pat, rep in HUB_LAYOUT:
            k = re.sub(pat, rep, k)
        return k
    save_file({ren(k): v for k, v in sd.items()}, path, metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rudder", default="target/release/rudder")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    siglip = dict(model_type="siglip_vision_model", vision_use_head=False, hidden_size=384,
                  intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, image_size=112,
                  patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    gemma = dict(model_type="gemma", hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                 num_attention_heads=8, num_key_value_heads=1, head_dim=64, vocab_size=VOCAB,
                 hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6)
    pg = T.PaliGemmaConfig(vision_config=siglip, text_config=gemma, projection_dim=512,
                           image_token_id=IMAGE_TOKEN).to_dict()
    dit = dict(gemma, hidden_size=256, intermediate_size=1024)
    cfg = T.PI0Config(vlm_config=pg, dit_config=dit, chunk_size=50, max_state_dim=32,
                      max_action_dim=32, num_inference_steps=10)
    model = T.PI0ForConditionalGeneration(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    n_img = (112 // 14) ** 2
    ids = torch.tensor([[IMAGE_TOKEN] * (2 * n_img) + byte_tokens(PROMPT, IMAGE_TOKEN)])
    px = torch.rand(1, 2, 3, 112, 112) * 2 - 1
    pam = torch.tensor([[True, True]])
    am = torch.ones_like(ids)
    state = torch.full((1, 32), 0.1)
    noise = torch.randn(1, 50, 32)

    def run():
        model.sample_actions(state=state, input_ids=ids, pixel_values=px, noise=noise.clone(),
                             attention_mask=am, pixel_attention_mask=pam, num_steps=10)

    with torch.inference_mode():
        for _ in range(2):
            run()
        ts = []
        for _ in range(a.runs):
            t = time.perf_counter()
            run()
            ts.append(1000 * (time.perf_counter() - t))
    torch_ms = statistics.median(ts)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        to_hub_layout(os.path.join(d, "model.safetensors"))
        out = subprocess.run([a.rudder, "bench", "vla", "--policy", d, "--prompt", PROMPT,
                              "--runs", str(a.runs), "--json"],
                             capture_output=True, text=True,
                             env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)))
    r = json.loads(out.stdout) if out.returncode == 0 else exit(f"rudder failed:\n{out.stderr}")
    assert r["prompt_tokens"] == len(byte_tokens(PROMPT, IMAGE_TOKEN)), r
    print(json.dumps({
        "model": "PI0ForConditionalGeneration", "params_M": round(params / 1e6, 2),
        "image_tokens": 2 * n_img, "prompt_tokens": r["prompt_tokens"], "chunk": 50,
        "euler_steps": 10, "threads": a.threads, "runs": a.runs,
        "torch_version": torch.__version__, "torch_p50_ms": round(torch_ms, 2),
        "rudder_p50_ms": round(r["p50_ms"], 2), "rudder_p99_ms": round(r["p99_ms"], 2),
        "rudder_params_M": round(r["params_M"], 2),
        "ratio_rudder_over_torch": round(r["p50_ms"] / torch_ms, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
