"""Bad input gets a text frame naming the problem, then close 1011, while a concurrent good
client keeps getting actions. Usage: bad_input.py HOST PORT MAX_FRAME_BYTES."""
import sys
import threading

import numpy as np
import websockets.sync.client as wsc
from websockets.exceptions import ConnectionClosed
from openpi_client import msgpack_numpy
from openpi_client import websocket_client_policy as wcp

host, port, max_frame = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
uri = f"ws://{host}:{port}"
obs = {
    "observation/image": np.zeros((32, 32, 3), dtype=np.uint8),
    "observation/wrist_image": np.full((64, 48, 3), 200, dtype=np.uint8),
    "observation/state": np.zeros(8, dtype=np.float64),
    "prompt": "pick up the cup",
}

# A good client that keeps inferring the whole time the bad ones are refused.
good = wcp.WebsocketClientPolicy(host, port)
expected = good.infer(obs)["actions"]
stop = threading.Event()
good_results = []
def keep_inferring():
    while not stop.is_set():
        good_results.append(good.infer(obs)["actions"])
t = threading.Thread(target=keep_inferring, daemon=True)
t.start()

def refused(payload, must_contain):
    with wsc.connect(uri, compression=None, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())  # metadata first
        ws.send(payload)
        text = ws.recv(timeout=30)
        assert isinstance(text, str), f"expected a text error frame, got {type(text)}"
        for needle in must_contain:
            assert needle in text, f"{needle!r} not in error {text!r}"
        try:
            extra = ws.recv(timeout=10)
            raise AssertionError(f"expected close, got another frame {extra!r}")
        except ConnectionClosed:
            pass
        assert ws.close_code == 1011, ws.close_code
        return text

missing = {k: v for k, v in obs.items() if k != "observation/state"}
print(refused(msgpack_numpy.packb(missing), ["observation/state", "missing"]))
wrong_dtype = dict(obs, **{"observation/image": np.zeros((32, 32, 3), dtype=np.float32)})
print(refused(msgpack_numpy.packb(wrong_dtype), ["observation/image", "uint8", "<f4"]))
wrong_shape = dict(obs, **{"observation/wrist_image": np.zeros((32, 32), dtype=np.uint8)})
print(refused(msgpack_numpy.packb(wrong_shape), ["observation/wrist_image", "[32, 32]"]))
bad_state = dict(obs, **{"observation/state": np.zeros(8, dtype=np.int64)})
print(refused(msgpack_numpy.packb(bad_state), ["observation/state", "<i8"]))
print(refused(b"\xc1 this is not msgpack", ["msgpack"]))
print(refused("a text frame", ["text frame"]))
print(refused(msgpack_numpy.packb({"__ctrl__": "reboot"}), ["__ctrl__"]))
print(refused(b"\x00" * (max_frame + 1), ["too large", str(max_frame)]))

stop.set()
t.join(timeout=120)
assert not t.is_alive(), "the good client hung"
assert len(good_results) >= 1, "the good client got no actions while bad ones were refused"
for a in good_results:
    assert np.array_equal(a, expected), "the good client's actions changed"

# A fresh client after all that still works.
assert np.array_equal(wcp.WebsocketClientPolicy(host, port).infer(obs)["actions"], expected)
print("OK", len(good_results), "good replies during the bad requests")
