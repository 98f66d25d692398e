"""The real openpi client against `rudder serve` with a VLA-tokens checkpoint: metadata, LIBERO
inference (shape, dtype, greedy determinism), a missing camera. Usage: client_tokens.py HOST
PORT HORIZON. Exits non-zero on failure."""
import sys

import numpy as np
from openpi_client import websocket_client_policy as wcp

host, port, horizon = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = wcp.WebsocketClientPolicy(host, port)
meta = c.get_server_metadata()
assert meta["model_type"] == "vla_tokens" and meta["server"] == "rudder", meta
assert (meta["action_horizon"], meta["action_dim"]) == (horizon, 7), meta
assert meta["state_dim"] == 0, meta  # as OpenVLA, no proprioception

rng = np.random.default_rng(1)
obs = {
    "observation/image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
    "observation/wrist_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
    "observation/state": rng.normal(size=8).astype(np.float64),
    "prompt": "pick up the black bowl and place it on the plate",
}
a1 = c.infer(obs)["actions"]
assert isinstance(a1, np.ndarray) and a1.shape == (horizon, 7) and a1.dtype == np.float64, a1
assert np.all(np.isfinite(a1)) and np.all(np.abs(a1[:, 6]) <= 1.0), a1
assert np.array_equal(a1, c.infer(obs)["actions"])  # greedy decoding
no_wrist = {k: v for k, v in obs.items() if k != "observation/wrist_image"}
assert c.infer(no_wrist)["actions"].shape == (horizon, 7)
print("OK", a1.shape, a1.dtype)
