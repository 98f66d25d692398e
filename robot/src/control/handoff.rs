//! Newest-value handoff between threads. The writer holds the lock only to swap an `Arc`; the
//! control thread only ever `try_lock`s, so it can be delayed by nothing but a failed attempt
//! (it then uses what it had and tries again next tick).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

#[derive(Debug, Default)]
pub struct Mailbox<T> {
    slot: Mutex<Option<(u64, Arc<T>)>>,
    version: AtomicU64,
}

impl<T> Mailbox<T> {
    pub fn new() -> Self {
        Self {
            slot: Mutex::new(None),
            version: AtomicU64::new(0),
        }
    }

    /// Replaces the stored value; returns its version (1, 2, ...).
    pub fn publish(&self, value: Arc<T>) -> u64 {
        let mut g = lock(&self.slot);
        let v = self.version.load(Ordering::Relaxed) + 1;
        *g = Some((v, value));
        self.version.store(v, Ordering::Release);
        v
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The stored value if newer than `seen`, without ever blocking.
    pub fn try_take_newer(&self, seen: u64) -> Option<(u64, Arc<T>)> {
        if self.version() <= seen {
            return None;
        }
        let g = match self.slot.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        g.as_ref()
            .filter(|(v, _)| *v > seen)
            .map(|(v, a)| (*v, Arc::clone(a)))
    }

    /// The stored value if newer than `seen`; may wait for a concurrent `publish` (never use on
    /// the control thread).
    pub fn take_newer(&self, seen: u64) -> Option<(u64, Arc<T>)> {
        if self.version() <= seen {
            return None;
        }
        lock(&self.slot)
            .as_ref()
            .filter(|(v, _)| *v > seen)
            .map(|(v, a)| (*v, Arc::clone(a)))
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a swapped
/// `Arc` or plain counters) is still consistent, so keep going.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_versions_increase() {
        let m = Mailbox::new();
        assert!(m.try_take_newer(0).is_none());
        m.publish(Arc::new(1));
        m.publish(Arc::new(2));
        let (v, x) = m.try_take_newer(0).expect("published");
        assert_eq!((v, *x), (2, 2));
        assert!(m.try_take_newer(v).is_none());
        let m2 = Arc::new(Mailbox::new());
        let w = {
            let m2 = Arc::clone(&m2);
            std::thread::spawn(move || {
                for i in 0..1000 {
                    m2.publish(Arc::new(i));
                }
            })
        };
        let mut seen = 0;
        let mut last = -1;
        while seen < 1000 {
            if let Some((v, x)) = m2.take_newer(seen) {
                assert!(v > seen && *x > last);
                seen = v;
                last = *x;
            }
        }
        w.join().expect("writer");
    }
}
