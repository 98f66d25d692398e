"""Real LIBERO against `rudder serve`: one libero_spatial episode driven by the policy server.

LIBERO's conventions as openpi's LIBERO example sends them: both camera images rotated 180
degrees (LIBERO renders upside down), the 8-value state (eef position 3, eef orientation as axis-
angle 3, gripper joint positions 2) and the task's language instruction as the prompt. The first
steps wait with a no-op action while the objects settle, as openpi's example does. Prints one
line per request and a JSON summary; exits non-zero if the protocol or the shapes are wrong.
Success is not expected from a policy trained in Rudder's own simulator.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from libero.libero import benchmark, get_libero_path
from libero.libero.envs import OffScreenRenderEnv
from openpi_client import websocket_client_policy
from robosuite.utils.transform_utils import quat2axisangle


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30, help="policy-driven steps")
    ap.add_argument("--replan", type=int, default=5, help="actions used per reply")
    ap.add_argument("--size", type=int, default=128, help="camera resolution")
    a = ap.parse_args()

    suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    task = suite.get_task(a.task)
    init = suite.get_task_init_states(a.task)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=a.size, camera_widths=a.size)
    env.seed(0)
    env.reset()
    obs = env.set_init_state(init[0])
    for _ in range(10):
        obs, _, _, _ = env.step([0.0] * 6 + [-1.0])

    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", a.port)
    meta = client.get_server_metadata()
    steps, requests, latencies, done = 0, 0, [], False
    while steps < a.steps and not done:
        state = np.concatenate(
            [obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
        ).astype(np.float64)
        element = {
            "observation/image": np.ascontiguousarray(obs["agentview_image"][::-1, ::-1]),
            "observation/wrist_image": np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1]),
            "observation/state": state,
            "prompt": str(task.language),
        }
        t0 = time.perf_counter()
        reply = client.infer(element)
        latencies.append(1e3 * (time.perf_counter() - t0))
        requests += 1
        actions = np.asarray(reply["actions"])
        if actions.ndim != 2 or actions.shape[1] != 7 or not np.all(np.isfinite(actions)):
            print(f"bad actions: shape {actions.shape} dtype {actions.dtype}", file=sys.stderr)
            return 1
        print(f"request {requests}: actions {actions.shape} {actions.dtype}, {latencies[-1]:.1f} ms")
        for act in actions[: a.replan]:
            obs, _, done, _ = env.step(act.tolist())
            steps += 1
            if done or steps >= a.steps:
                break
    env.close()
    print(
        json.dumps(
            {
                "task": str(task.language),
                "steps": steps,
                "requests": requests,
                "done": bool(done),
                "server_metadata": {k: str(v) for k, v in meta.items()},
                "latency_ms_p50": float(np.percentile(latencies, 50)),
                "latency_ms_max": float(np.max(latencies)),
            }
        )
    )
    return 0 if steps >= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
