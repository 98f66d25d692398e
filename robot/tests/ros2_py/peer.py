"""rclpy peer for rudder-robot's ROS 2 tests.

Modes (argv[1]):
  publish SECONDS  -- publishes the fixed JointState (/joint_states), Image (/camera/rgb, rgb8)
                      and Float64 speed scaling at 125 Hz; stamps are "now" unless --stamp-age.
  bad KIND SECONDS -- publishes a bad input at 125 Hz: nan | stale | encoding | unknown | length.
  listen SECONDS   -- subscribes the two command topics and prints, as one JSON line each,
                      the first JointTrajectory and the first Float64MultiArray it receives.
Prints READY once its publishers/subscriptions exist.
"""
import json
import sys
import time

import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

NAMES = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
         "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
PREFIX = "ur_"
POS = [0.25, -1.25, 1.5, -0.75, 1.0, 0.5]
VEL = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
W, H = 8, 6


def image(encoding):
    img = Image()
    img.width, img.height, img.encoding = W, H, encoding
    img.step = W * 3 + 2  # row padding, which the bridge must strip
    img.data = bytes((i * 7 + 3) % 256 for i in range(img.step * H))
    return img


def joint_state(node, kind):
    js = JointState()
    js.name = [PREFIX + n for n in NAMES]
    js.position = list(POS)
    js.velocity = list(VEL)
    stamp = node.get_clock().now()
    if kind == "stale":
        stamp = stamp - rclpy.duration.Duration(seconds=0.2)
    js.header.stamp = stamp.to_msg()
    if kind == "nan":
        js.position[2] = float("nan")
    elif kind == "unknown":
        js.name[0] = "not_a_joint"
    elif kind == "length":
        js.position = js.position[:5]
    return js


def publish(seconds, kind):
    node = Node("rudder_test_peer")
    pj = node.create_publisher(JointState, "/joint_states", 10)
    pi = node.create_publisher(Image, "/camera/rgb", 10)
    ps = node.create_publisher(Float64, "/speed_scaling_state_broadcaster/speed_scaling", 10)
    print("READY", flush=True)
    end = time.time() + seconds
    enc = "mono8" if kind == "encoding" else "rgb8"
    while time.time() < end:
        pj.publish(joint_state(node, kind))
        pi.publish(image(enc))
        ps.publish(Float64(data=0.75))
        rclpy.spin_once(node, timeout_sec=0.008)
    node.destroy_node()


def exact(xs):
    """Floats as repr() strings: round-trip exact whatever JSON parser reads them."""
    return [repr(float(x)) for x in xs]


def listen(seconds):
    node = Node("rudder_test_listener")
    got = {}

    def on_traj(m):
        if "trajectory" not in got:
            got["trajectory"] = {
                "joint_names": list(m.joint_names),
                "points": [{"positions": exact(p.positions), "velocities": exact(p.velocities),
                            "sec": p.time_from_start.sec, "nanosec": p.time_from_start.nanosec}
                           for p in m.points]}
            print(json.dumps({"trajectory": got["trajectory"]}), flush=True)

    def on_fwd(m):
        if "forward" not in got:
            got["forward"] = exact(m.data)
            print(json.dumps({"forward": got["forward"]}), flush=True)

    node.create_subscription(JointTrajectory, "/scaled_joint_trajectory_controller/joint_trajectory", on_traj, 10)
    node.create_subscription(Float64MultiArray, "/forward_position_controller/commands", on_fwd, 10)
    print("READY", flush=True)
    end = time.time() + seconds
    while time.time() < end and len(got) < 2:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()


def main():
    rclpy.init()
    try:
        if sys.argv[1] == "publish":
            publish(float(sys.argv[2]), "good")
        elif sys.argv[1] == "bad":
            publish(float(sys.argv[3]), sys.argv[2])
        elif sys.argv[1] == "listen":
            listen(float(sys.argv[2]))
    except (KeyboardInterrupt, Exception) as e:  # ExternalShutdownException on SIGTERM
        print(f"peer: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
