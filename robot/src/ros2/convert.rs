//! Checks and conversions between ROS messages and rudder-robot types. Every function returns
//! an [`InputError`] that says what was wrong instead of panicking on a malformed message.

use crate::types::ImageRgb8;
use r2r::builtin_interfaces::msg::Duration as RosDuration;
use r2r::sensor_msgs::msg::{Image, JointState as RosJointState};
use r2r::std_msgs::msg::{Float64MultiArray, MultiArrayDimension, MultiArrayLayout};
use r2r::trajectory_msgs::msg::{JointTrajectory, JointTrajectoryPoint};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum InputError {
    #[error("joint_states: joint `{0}` missing")]
    MissingJoint(String),
    #[error("joint_states: unknown joint `{0}` (expected names with tf_prefix `{1}`)")]
    UnknownJoint(String, String),
    #[error("joint_states: {field} has {got} values for {names} names")]
    Length {
        field: &'static str,
        got: usize,
        names: usize,
    },
    #[error("joint_states: {field}[{joint}] is not finite ({value})")]
    NonFinite {
        field: &'static str,
        joint: String,
        value: f64,
    },
    #[error("joint_states: {age:.3} s old (limit {limit:.3} s)")]
    Stale { age: f64, limit: f64 },
    #[error("image `{camera}`: unsupported encoding `{encoding}` (rgb8 and bgr8 only)")]
    Encoding { camera: String, encoding: String },
    #[error("image `{camera}`: {reason}")]
    ImageShape { camera: String, reason: String },
    #[error("{topic}: {reason}")]
    Value { topic: String, reason: String },
}

/// Maps the driver's joint names (`{tf_prefix}shoulder_pan_joint`, ...) to joint indices.
#[derive(Debug, Clone, PartialEq)]
pub struct JointMap {
    pub tf_prefix: String,
    /// Full names (prefix included), in the embodiment's joint order.
    pub names: Vec<String>,
    /// Full name of a gripper joint whose position is the closure (-1 open .. 1 closed).
    pub gripper: Option<String>,
    /// Names that may appear and are ignored (e.g. finger joints).
    pub ignored: Vec<String>,
}

/// A checked joint sample.
#[derive(Debug, Clone, PartialEq)]
pub struct JointSample {
    pub positions: Vec<f64>,
    pub velocities: Vec<f64>,
    pub gripper: Option<f64>,
}

impl JointMap {
    pub fn ur(tf_prefix: &str, gripper: Option<&str>) -> Self {
        Self {
            tf_prefix: tf_prefix.to_string(),
            names: crate::ur5::UR_JOINT_NAMES
                .iter()
                .map(|n| format!("{tf_prefix}{n}"))
                .collect(),
            gripper: gripper.map(|g| format!("{tf_prefix}{g}")),
            ignored: Vec::new(),
        }
    }

    /// Checks a `sensor_msgs/JointState` and reorders it into the embodiment's joint order.
    /// Unknown names, missing joints, wrong array lengths and non-finite values are errors.
    /// Empty `velocity` is allowed (zeros).
    pub fn parse(&self, m: &RosJointState) -> Result<JointSample, InputError> {
        let n = m.name.len();
        if m.position.len() != n {
            return Err(InputError::Length {
                field: "position",
                got: m.position.len(),
                names: n,
            });
        }
        if !m.velocity.is_empty() && m.velocity.len() != n {
            return Err(InputError::Length {
                field: "velocity",
                got: m.velocity.len(),
                names: n,
            });
        }
        let mut q = vec![f64::NAN; self.names.len()];
        let mut qd = vec![0.0; self.names.len()];
        let mut seen = vec![false; self.names.len()];
        let mut gripper = None;
        for (i, name) in m.name.iter().enumerate() {
            let pos = m.position[i];
            let vel = m.velocity.get(i).copied().unwrap_or(0.0);
            if let Some(j) = self.names.iter().position(|x| x == name) {
                for (field, v) in [("position", pos), ("velocity", vel)] {
                    if !v.is_finite() {
                        return Err(InputError::NonFinite {
                            field,
                            joint: name.clone(),
                            value: v,
                        });
                    }
                }
                q[j] = pos;
                qd[j] = vel;
                seen[j] = true;
            } else if self.gripper.as_deref() == Some(name.as_str()) {
                if !pos.is_finite() {
                    return Err(InputError::NonFinite {
                        field: "position",
                        joint: name.clone(),
                        value: pos,
                    });
                }
                gripper = Some(pos);
            } else if !self.ignored.iter().any(|x| x == name) {
                return Err(InputError::UnknownJoint(
                    name.clone(),
                    self.tf_prefix.clone(),
                ));
            }
        }
        if let Some(j) = seen.iter().position(|s| !s) {
            return Err(InputError::MissingJoint(self.names[j].clone()));
        }
        Ok(JointSample {
            positions: q,
            velocities: qd,
            gripper,
        })
    }

    /// A `sensor_msgs/JointState` in this map's names (the simulated driver publishes these).
    pub fn to_msg(
        &self,
        stamp: r2r::builtin_interfaces::msg::Time,
        q: &[f64],
        qd: &[f64],
        gripper: Option<f64>,
    ) -> RosJointState {
        let mut name = self.names.clone();
        let mut position = q.to_vec();
        let mut velocity = qd.to_vec();
        if let (Some(g), Some(v)) = (&self.gripper, gripper) {
            name.push(g.clone());
            position.push(v);
            velocity.push(0.0);
        }
        RosJointState {
            header: r2r::std_msgs::msg::Header {
                stamp,
                frame_id: String::new(),
            },
            name,
            position,
            velocity,
            effort: Vec::new(),
        }
    }
}

/// Converts a `sensor_msgs/Image` (rgb8 or bgr8, any row padding) to a packed RGB8 image.
pub fn image_to_rgb8(camera: &str, m: &Image) -> Result<ImageRgb8, InputError> {
    let bgr = match m.encoding.as_str() {
        "rgb8" => false,
        "bgr8" => true,
        other => {
            return Err(InputError::Encoding {
                camera: camera.to_string(),
                encoding: other.to_string(),
            })
        }
    };
    let shape = |reason: String| InputError::ImageShape {
        camera: camera.to_string(),
        reason,
    };
    let (w, h) = (m.width as usize, m.height as usize);
    let row = w
        .checked_mul(3)
        .ok_or_else(|| shape(format!("width {w} too large")))?;
    let step = m.step as usize;
    if step < row {
        return Err(shape(format!("step {step} < width*3 = {row}")));
    }
    let need = step
        .checked_mul(h)
        .ok_or_else(|| shape(format!("{step} x {h} overflows")))?;
    if m.data.len() < need {
        return Err(shape(format!(
            "{} data bytes, step {step} x height {h} needs {need}",
            m.data.len()
        )));
    }
    let mut data = Vec::with_capacity(row * h);
    for y in 0..h {
        let r = &m.data[y * step..y * step + row];
        if bgr {
            for p in r.chunks_exact(3) {
                data.extend_from_slice(&[p[2], p[1], p[0]]);
            }
        } else {
            data.extend_from_slice(r);
        }
    }
    ImageRgb8::new(camera, m.width, m.height, data).map_err(|e| shape(e.to_string()))
}

/// A packed RGB8 image as a `sensor_msgs/Image`.
pub fn rgb8_to_image(
    img: &ImageRgb8,
    stamp: r2r::builtin_interfaces::msg::Time,
    frame_id: &str,
) -> Image {
    Image {
        header: r2r::std_msgs::msg::Header {
            stamp,
            frame_id: frame_id.to_string(),
        },
        height: img.height,
        width: img.width,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: img.width * 3,
        data: img.data.clone(),
    }
}

/// A streaming command for `/forward_position_controller/commands`.
pub fn forward_command(q: &[f64]) -> Float64MultiArray {
    Float64MultiArray {
        layout: MultiArrayLayout {
            dim: vec![MultiArrayDimension {
                label: "joints".into(),
                size: q.len() as u32,
                stride: q.len() as u32,
            }],
            data_offset: 0,
        },
        data: q.to_vec(),
    }
}

/// Seconds as a `builtin_interfaces/Duration` (negative and non-finite become 0).
pub fn ros_duration(secs: f64) -> RosDuration {
    let s = if secs.is_finite() && secs > 0.0 {
        secs
    } else {
        0.0
    };
    let whole = s.floor();
    let mut sec = whole.min(i32::MAX as f64) as i32;
    let mut nanosec = ((s - whole) * 1e9).round() as u32;
    if nanosec >= 1_000_000_000 {
        sec = sec.saturating_add(1);
        nanosec -= 1_000_000_000;
    }
    RosDuration { sec, nanosec }
}

/// `builtin_interfaces/Duration` in seconds.
pub fn duration_secs(d: &RosDuration) -> f64 {
    d.sec as f64 + d.nanosec as f64 * 1e-9
}

/// A `trajectory_msgs/JointTrajectory` whose point `k` is `points[k]` at
/// `time_from_start = (k + 1) * dt`, with velocities by finite differences (0 at the end).
pub fn trajectory_msg(
    joint_names: &[String],
    stamp: r2r::builtin_interfaces::msg::Time,
    points: &[Vec<f64>],
    dt: f64,
) -> JointTrajectory {
    let mut out = Vec::with_capacity(points.len());
    for (k, p) in points.iter().enumerate() {
        let next = points.get(k + 1);
        let velocities = match next {
            Some(n) => p.iter().zip(n).map(|(a, b)| (b - a) / dt).collect(),
            None => vec![0.0; p.len()],
        };
        out.push(JointTrajectoryPoint {
            positions: p.clone(),
            velocities,
            accelerations: Vec::new(),
            effort: Vec::new(),
            time_from_start: ros_duration((k + 1) as f64 * dt),
        });
    }
    JointTrajectory {
        header: r2r::std_msgs::msg::Header {
            stamp,
            frame_id: String::new(),
        },
        joint_names: joint_names.to_vec(),
        points: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(names: &[&str], pos: Vec<f64>) -> RosJointState {
        RosJointState {
            name: names.iter().map(|s| s.to_string()).collect(),
            position: pos,
            ..Default::default()
        }
    }

    #[test]
    fn joint_state_is_reordered_and_checked() {
        let map = JointMap::ur("ur_", Some("gripper"));
        let mut names: Vec<String> = map.names.clone();
        names.reverse();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let s = map
            .parse(&js(&refs, vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0]))
            .expect("valid");
        assert_eq!(s.positions, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut bad = refs.clone();
        bad[0] = "wrist_3_joint";
        assert!(matches!(
            map.parse(&js(&bad, vec![0.0; 6])),
            Err(InputError::UnknownJoint(..))
        ));
        assert!(matches!(
            map.parse(&js(&refs[..5], vec![0.0; 5])),
            Err(InputError::MissingJoint(..))
        ));
        assert!(matches!(
            map.parse(&js(&refs, vec![0.0; 5])),
            Err(InputError::Length { .. })
        ));
        assert!(matches!(
            map.parse(&js(&refs, vec![0.0, f64::NAN, 0.0, 0.0, 0.0, 0.0])),
            Err(InputError::NonFinite { .. })
        ));
    }

    #[test]
    fn images_convert_and_bad_encodings_are_named() {
        let m = Image {
            width: 2,
            height: 1,
            step: 7,
            encoding: "bgr8".into(),
            data: vec![1, 2, 3, 4, 5, 6, 99],
            ..Default::default()
        };
        let img = image_to_rgb8("cam", &m).expect("bgr8");
        assert_eq!(img.data, vec![3, 2, 1, 6, 5, 4]);
        let e = image_to_rgb8(
            "cam",
            &Image {
                encoding: "mono8".into(),
                ..m.clone()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("mono8"), "{e}");
        let short = Image {
            data: vec![0; 3],
            ..m
        };
        assert!(image_to_rgb8("cam", &short).is_err());
    }

    #[test]
    fn durations_round_trip() {
        let d = ros_duration(2.5);
        assert_eq!((d.sec, d.nanosec), (2, 500_000_000));
        assert_eq!(duration_secs(&d), 2.5);
        assert_eq!(ros_duration(f64::NAN).sec, 0);
    }
}
