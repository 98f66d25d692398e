//! The node thread: spins an r2r node and drains its subscription streams, until stopped.
//! Stopping joins the thread, and the node is dropped on it, before the caller goes on
//! (REFERENCE §11, gotcha 3).

use futures::{FutureExt, Stream, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Called after every `spin_once`; drains whatever its subscription has received.
pub type Handler = Box<dyn FnMut() + Send>;

/// Wraps a subscription stream and a per-message callback into a [`Handler`].
pub fn drain<T, S, F>(mut stream: S, mut on_msg: F) -> Handler
where
    S: Stream<Item = T> + Unpin + Send + 'static,
    F: FnMut(T) + Send + 'static,
{
    Box::new(move || {
        while let Some(Some(msg)) = stream.next().now_or_never() {
            on_msg(msg);
        }
    })
}

/// A running node thread. Dropping it also stops and joins it.
pub struct Spinner {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Moves `node` onto a new thread that spins it (waiting at most `wait` per spin) and runs
    /// the handlers after each spin.
    pub fn start(
        name: &str,
        mut node: r2r::Node,
        mut handlers: Vec<Handler>,
        wait: Duration,
    ) -> std::io::Result<Self> {
        keep_libpython();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    node.spin_once(wait);
                    for h in handlers.iter_mut() {
                        h();
                    }
                }
                drop(handlers);
                drop(node);
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (the node is dropped on it).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::error!("ros2: the node thread panicked");
            }
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// With ROS 2 from PyPI wheels, librcl needs CPython symbols that nothing else links: a live call
/// into libpython keeps the linker from dropping it (see build.rs).
#[cfg(rudder_ros2_pypi)]
fn keep_libpython() {
    extern "C" {
        fn Py_IsInitialized() -> std::os::raw::c_int;
    }
    // SAFETY: Py_IsInitialized only reads a flag; it is valid before initialisation.
    let _ = unsafe { Py_IsInitialized() };
}

#[cfg(not(rudder_ros2_pypi))]
fn keep_libpython() {}
