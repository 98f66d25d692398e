#!/usr/bin/env python3
"""Rudder vs PyTorch on the same 29.5M-parameter Llama, side by side in one run.

Builds the model of the issue (hidden 512, 8 layers, MLP 1376, 8 heads, vocab 4096, fp32) with
transformers, saves it as a Hugging Face checkpoint, times PyTorch (2 threads, SDPA, inference
mode, full-sequence logits, no KV cache), then times `rudder bench llama` on the very same
files, and prints both with the ratio rudder / torch. Medians of N runs after 2 warm-ups, in
R rounds that alternate torch and rudder; the ratio is the median of the rounds' ratios.

Usage: python benches/llama_vs_torch.py [--rudder target/release/rudder] [--runs 10] [--rounds 3] [--lora]
"""
import argparse, json, os, statistics, subprocess, tempfile, time

import torch
import transformers as T


def median_ms(fn, runs, warm=2):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rudder", default="target/release/rudder")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seqs", default="64,256")
    ap.add_argument("--rounds", type=int, default=3, help="alternating torch / rudder rounds")
    ap.add_argument("--lora", action="store_true", help="also time a LoRA training step (r 4, q+v, b8 s64)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                        tie_word_embeddings=False, attn_implementation="sdpa")
    model = T.LlamaForCausalLM(cfg).eval()
    seqs = [int(s) for s in a.seqs.split(",")]
    res = {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "torch": torch.__version__, "transformers": T.__version__, "threads": 2,
           "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        g = torch.Generator().manual_seed(0)
        inputs = {s: torch.randint(0, 4096, (1, s), generator=g) for s in seqs}
        env = dict(os.environ)  # rudder picks its own thread settings (see launch/src/main.rs)
        # Rounds alternate torch and rudder, so a slow spell of a shared machine lands on both
        # sides rather than on one; the ratio reported is the median of the rounds' ratios.
        rounds = []
        for r in range(a.rounds):
            rr = {}
            for s in seqs:
                with torch.inference_mode():
                    rr[f"torch_fwd_b1_s{s}_ms"] = median_ms(
                        lambda: model(input_ids=inputs[s], use_cache=False).logits, a.runs)
            cmd = [a.rudder, "bench", "llama", "--model", d, "--seqs", a.seqs, "--runs", str(a.runs), "--json"]
            if a.lora and r == a.rounds - 1:
                cmd.append("--lora")
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
            rr["rudder"] = out
            for s in seqs:
                rr[f"ratio_fwd_s{s}"] = out[f"fwd_b1_s{s}"]["median_ms"] / rr[f"torch_fwd_b1_s{s}_ms"]
            rounds.append(rr)
        res["rounds"] = rounds
        res["rudder"] = out
        for s in seqs:
            res[f"torch_fwd_b1_s{s}_ms"] = statistics.median(rr[f"torch_fwd_b1_s{s}_ms"] for rr in rounds)
            res[f"rudder_fwd_b1_s{s}_ms"] = statistics.median(
                rr["rudder"][f"fwd_b1_s{s}"]["median_ms"] for rr in rounds)
            res[f"ratio_fwd_s{s}"] = statistics.median(rr[f"ratio_fwd_s{s}"] for rr in rounds)
        if a.lora:
            from peft import LoraConfig, get_peft_model
            pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
            pm.train()
            opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
            ids = torch.randint(0, 4096, (8, 64), generator=g)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = pm(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
                opt.step()
            res["torch_lora_step_b8_s64_ms"] = median_ms(step, a.runs)
            res["ratio_lora_step"] = out["lora_step_b8_s64"]["median_ms"] / res["torch_lora_step_b8_s64_ms"]
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    print()
    print(f"{'measurement':24s} {'rudder ms':>10s} {'torch ms':>10s} {'ratio':>7s}")
    for s in seqs:
        for i, rr in enumerate(res["rounds"]):
            peak = rr["rudder"].get("fma_peak_gflops")
            print(f"{'  round ' + str(i + 1) + ' s' + str(s):24s} "
                  f"{rr['rudder'][f'fwd_b1_s{s}']['median_ms']:10.2f} "
                  f"{rr[f'torch_fwd_b1_s{s}_ms']:10.2f} {rr[f'ratio_fwd_s{s}']:7.3f}"
                  + (f"   (FMA peak {peak:.0f} GFLOP/s)" if peak else ""))
        print(f"{'forward b1 s' + str(s):24s} {res[f'rudder_fwd_b1_s{s}_ms']:10.2f} "
              f"{res[f'torch_fwd_b1_s{s}_ms']:10.2f} {res[f'ratio_fwd_s{s}']:7.3f}   (medians over rounds)")
    if a.lora:
        lo = out["lora_step_b8_s64"]
        tl = res["torch_lora_step_b8_s64_ms"]
        print(f"{'LoRA step b8 s64':24s} {lo['median_ms']:10.2f} {tl:10.2f} {res['ratio_lora_step']:7.3f}"
              f"   ({lo.get('backward', 'autograd')} backward)")
        if "autograd_median_ms" in lo:
            print(f"{'  same, candle autograd':24s} {lo['autograd_median_ms']:10.2f} {tl:10.2f} "
                  f"{lo['autograd_median_ms'] / tl:7.3f}")
        ff = out["full_ft_step_b8_s64"]
        print(f"full fine-tuning step b8 s64: {ff['median_ms']:.1f} ms, {ff['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
