//! Link workaround for ROS 2 Jazzy installed from PyPI wheels (REFERENCE §11, gotcha 2): the
//! wheels' librcl pulls in `*__rosidl_generator_py.so`, which use CPython symbols without linking
//! libpython, so every binary that links r2r must link libpython3.11 itself. Active only with the
//! `ros2` feature and only when the PyPI environment is in use (`ROS_PYTHON_LIBDIR`, exported by
//! scripts/setup-ros2.sh); a normal /opt/ros/jazzy install needs nothing here.
//!
//! The library link reaches every crate that depends on this one (rudder-sim's driver, the CLI),
//! but the linker's `--as-needed` would drop it since no Rust code calls Python: the
//! `rudder_ros2_pypi` cfg makes `ros2::spin` call `Py_IsInitialized` (harmless) so it stays.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(rudder_ros2_pypi)");
    println!("cargo:rerun-if-env-changed=ROS_PYTHON_LIBDIR");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_ROS2").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("ROS_PYTHON_LIBDIR") else {
        return;
    };
    let dir = dir.to_string_lossy();
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=python3.11");
    println!("cargo:rustc-cfg=rudder_ros2_pypi");
    // An rpath for this package's own tests, examples and benches (link-args do not propagate;
    // dependents find libpython through LD_LIBRARY_PATH from .venv-ros2/env.sh).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
