//! The objects in use, one slot per object: opening an object and evicting it take turns on
//! that object's slot only, so the sled reads, file creation and pack allocation of one open
//! never wait for another object's, and eviction never blocks opens of other objects. The
//! table itself is locked only to find or add a slot.

use super::{CachedObject, ObjectId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One object's slot.
#[derive(Default)]
struct Slot {
    /// Held by whoever opens or evicts the object: one at a time (single flight).
    turn: Mutex<()>,
    /// The open object, if any. Locked only for a moment, never across I/O.
    obj: Mutex<Weak<CachedObject>>,
}

/// A slot, held for one open or eviction of its object.
pub(crate) struct Turn<'a> {
    slot: &'a Slot,
}

impl Turn<'_> {
    /// The open object, if it is still alive.
    pub(crate) fn get(&self) -> Option<Arc<CachedObject>> {
        self.slot.obj.lock().unwrap_or_else(|e| e.into_inner()).upgrade()
    }

    /// Records `obj` as the object's open instance.
    pub(crate) fn set(&self, obj: &Arc<CachedObject>) {
        *self.slot.obj.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(obj);
    }

    /// Forgets the open instance: the next open starts afresh.
    pub(crate) fn forget(&self) {
        *self.slot.obj.lock().unwrap_or_else(|e| e.into_inner()) = Weak::new();
    }
}

/// Every object's slot.
#[derive(Default)]
pub(crate) struct OpenTable {
    slots: Mutex<HashMap<ObjectId, Arc<Slot>>>,
    /// Size of the table after the last pruning: the next one waits until it has doubled.
    pruned_at: AtomicUsize,
}

impl OpenTable {
    fn slot(&self, id: ObjectId) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(&id) {
            return s.clone();
        }
        // Slots nobody holds and whose object is gone are dropped now and then (amortized).
        if slots.len() >= 2 * self.pruned_at.load(Ordering::Relaxed) + 64 {
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.obj.lock().unwrap_or_else(|e| e.into_inner()).strong_count() > 0
            });
            self.pruned_at.store(slots.len(), Ordering::Relaxed);
        }
        slots.entry(id).or_default().clone()
    }

    /// Runs `work` with `id`'s turn held: opens and evictions of that object take turns, and
    /// everything else goes on.
    pub(crate) fn with_turn<T>(&self, id: ObjectId, work: impl FnOnce(&Turn<'_>) -> T) -> T {
        let slot = self.slot(id);
        let _turn = slot.turn.lock().unwrap_or_else(|e| e.into_inner());
        work(&Turn { slot: &slot })
    }

    /// The ids of objects open now.
    pub(crate) fn open_ids(&self) -> HashSet<ObjectId> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|(_, s)| s.obj.lock().unwrap_or_else(|e| e.into_inner()).strong_count() > 0)
            .map(|(id, _)| *id)
            .collect()
    }
}
