//! Locks by name: two holders of one key run one after the other, holders of different keys side
//! by side. The CSI servers serialize calls per volume ID or request name (as TopoLVM does with
//! one global mutex, but only per key), and lvmd serializes copies per volume name.
//!
//! An entry lives only while someone holds or waits for its key, so a server that has seen
//! millions of volume IDs keeps none of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Entries = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// A set of named locks. Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct KeyedLocks {
    entries: Entries,
}

/// Holds one key until dropped; `'static`, so it can move into a task of its own.
#[derive(Debug)]
pub struct KeyGuard {
    entries: Entries,
    key: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// `None` only while waiting: a waiter that gives up drops a guard without it.
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Waits until `key` is free, then holds it.
    pub async fn lock(&self, key: &str) -> KeyGuard {
        // Taken under the map's lock, so the entry counts this waiter before it waits.
        let mutex = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        let mut held = KeyGuard {
            entries: self.entries.clone(),
            key: key.to_owned(),
            mutex,
            guard: None,
        };
        held.guard = Some(held.mutex.clone().lock_owned().await);
        held
    }

    /// How many keys are held or waited for.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no key is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // The map and this guard are the last two: nobody else holds or waits, and nobody can
        // start waiting without the map's lock, which this holds.
        if entries
            .get(&self.key)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 2)
        {
            entries.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_key_waits_another_does_not_and_entries_go_with_their_last_holder() {
        let locks = KeyedLocks::default();
        let first = locks.lock("a").await;
        drop(locks.lock("b").await);
        assert_eq!(locks.len(), 1, "b went with its holder");

        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _held = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of a waits");
        drop(first);
        assert_eq!(locks.len(), 1, "a stays while its waiter waits");
        waiter.await.expect("waiter");
        assert!(locks.is_empty(), "a went with its last holder");
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_entry() {
        let locks = KeyedLocks::default();
        let held = locks.lock("a").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), locks.lock("a")).await;
        assert!(gave_up.is_err(), "a is held");
        drop(held);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_dropped_after_the_key_was_handed_to_it_leaves_no_entry() {
        let locks = KeyedLocks::default();
        let held = locks.lock("a").await;
        let mut waiter = Box::pin(locks.lock("a"));
        assert!(futures::poll!(&mut waiter).is_pending(), "a is held");
        // The key passes to the waiter, which is dropped before it is polled again.
        drop(held);
        drop(waiter);
        assert!(locks.is_empty());
        drop(locks.lock("a").await);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn many_holders_of_one_key_run_one_at_a_time() {
        let locks = KeyedLocks::default();
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                tokio::spawn(async move {
                    let _held = locks.lock("k").await;
                    let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert_eq!(now, 0, "nobody else inside");
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert!(locks.is_empty());
    }
}
