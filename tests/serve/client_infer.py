"""The real openpi client against `rudder serve`: metadata, LIBERO inference, determinism,
an episode control message. Usage: client_infer.py HOST PORT. Exits non-zero on failure."""
import sys

import numpy as np
from openpi_client import msgpack_numpy
from openpi_client import websocket_client_policy as wcp

host, port = sys.argv[1], int(sys.argv[2])
c = wcp.WebsocketClientPolicy(host, port)
meta = c.get_server_metadata()
assert isinstance(meta, dict), meta
assert meta["model_type"] == "pi0" and meta["server"] == "rudder", meta
horizon, dim = meta["action_horizon"], meta["action_dim"]
assert (horizon, dim) == (4, 6), meta

rng = np.random.default_rng(0)
obs = {
    "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "observation/state": rng.normal(size=8).astype(np.float64),
    "prompt": "put the bowl on the plate",
}
r1 = c.infer(obs)
a1 = r1["actions"]
assert isinstance(a1, np.ndarray), type(a1)
assert a1.shape == (horizon, dim), a1.shape
assert a1.dtype == np.float64, a1.dtype
assert np.all(np.isfinite(a1)), a1
assert r1["server_timing"]["infer_ms"] > 0, r1
a2 = c.infer(obs)["actions"]
assert np.array_equal(a1, a2), (a1, a2)

# The inputs matter: another prompt, a float32 state, no wrist camera.
other = dict(obs, prompt="open the drawer")
assert not np.array_equal(a1, c.infer(other)["actions"])
f32 = dict(obs, **{"observation/state": obs["observation/state"].astype(np.float32)})
assert c.infer(f32)["actions"].shape == (horizon, dim)
no_wrist = {k: v for k, v in obs.items() if k != "observation/wrist_image"}
assert c.infer(no_wrist)["actions"].shape == (horizon, dim)

# Episode control messages (newer openpi clients), through the client's own packer.
for ctrl in ("episode_start", "episode_end"):
    c._ws.send(msgpack_numpy.packb({"__ctrl__": ctrl, "episode": 3}))
    ack = msgpack_numpy.unpackb(c._ws.recv())
    assert ack == {"__ack__": ctrl}, ack
# Still in lockstep afterwards.
assert np.array_equal(c.infer(obs)["actions"], a1)
print("OK", a1.shape, a1.dtype)
