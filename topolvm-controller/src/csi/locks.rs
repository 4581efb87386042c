//! Per-key serialization (TopoLVM: per name for CreateVolume and CreateSnapshot, per volume id
//! for the rest), so two retries of one request never race each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A set of named locks; an entry lives only while someone holds or waits for it.
#[derive(Debug, Default)]
pub struct Locks {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key until dropped.
#[derive(Debug)]
pub struct KeyGuard<'a> {
    locks: &'a Locks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or_default()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        // The map and our guard hold the mutex; anyone else waiting holds a third reference.
        if let Some(mutex) = held.get(&self.key)
            && Arc::strong_count(mutex) <= 2
        {
            held.remove(&self.key);
        }
        self.guard.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_waits_other_key_does_not_and_entries_go_away() {
        let locks = Arc::new(Locks::default());
        let first = locks.lock("a").await;
        // Another key is free.
        drop(locks.lock("b").await);
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second holder of a key must wait"
        );
        drop(first);
        waiter.await.expect("test fixture");
        assert_eq!(locks.len(), 0);
    }
}
