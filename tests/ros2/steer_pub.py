"""Publishes std_msgs/Float64MultiArray steering coefficients on /rudder/steering.

Usage: python steer_pub.py SECONDS ALPHA [ALPHA ...]
Publishes the values at 10 Hz for SECONDS seconds (a subscriber that joins late still gets
them); prints READY once the publisher exists.
"""
import sys
import time

import rclpy
from std_msgs.msg import Float64MultiArray


def main():
    seconds = float(sys.argv[1])
    values = [float(v) for v in sys.argv[2:]]
    rclpy.init()
    node = rclpy.create_node("rudder_steer_pub")
    pub = node.create_publisher(Float64MultiArray, "/rudder/steering", 10)
    print("READY", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = Float64MultiArray()
        msg.data = values
        pub.publish(msg)
        time.sleep(0.1)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
