//! The request-id table (Linux's `shadow` array with its free list): every
//! request on a ring carries an id from here, and a response is accepted
//! only if its id names a request that is outstanding right now.
//!
//! An id is `generation << 32 | index`: the index picks the slot, and the
//! generation (bumped on every allocation of the slot) makes a stale or
//! replayed id of an earlier use of the same slot unknown too.

use alloc::vec::Vec;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdTableError {
    /// The id names no outstanding request: out of range, a free slot, or an
    /// earlier use of the slot (duplicate or stale response).
    #[error("id {id:#x} names no outstanding request")]
    Unknown {
        /// The id.
        id: u64,
    },
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A fixed-capacity table of outstanding requests with a free list.
#[derive(Debug)]
pub struct IdTable<T> {
    slots: Vec<Slot<T>>,
    /// Free slot indices, used LIFO.
    free: Vec<u32>,
}

/// Splits an id into (index, generation).
fn split(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

fn join(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | index as u64
}

impl<T> IdTable<T> {
    /// A table of `capacity` ids (at most `u32::MAX`).
    pub fn new(capacity: usize) -> IdTable<T> {
        let capacity = capacity.min(u32::MAX as usize);
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || Slot {
            generation: 0,
            value: None,
        });
        // Reverse so the first allocation gets index 0.
        let free = (0..capacity as u32).rev().collect();
        IdTable { slots, free }
    }

    /// The number of ids.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The number of outstanding ids.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no id is outstanding.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Stores `value` under a fresh id; gives the value back when the table
    /// is full.
    pub fn insert(&mut self, value: T) -> Result<u64, T> {
        let Some(index) = self.free.pop() else {
            return Err(value);
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.value = Some(value);
        Ok(join(index as usize, slot.generation))
    }

    fn slot(&self, id: u64) -> Option<&Slot<T>> {
        let (index, generation) = split(id);
        self.slots
            .get(index)
            .filter(|s| s.generation == generation && s.value.is_some())
    }

    /// The value of an outstanding id.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.slot(id).and_then(|s| s.value.as_ref())
    }

    /// The value of an outstanding id, mutably.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.slot(id)?;
        let (index, _) = split(id);
        self.slots.get_mut(index).and_then(|s| s.value.as_mut())
    }

    /// Ends an outstanding id and returns its value; the id becomes unknown.
    pub fn remove(&mut self, id: u64) -> Result<T, IdTableError> {
        self.slot(id).ok_or(IdTableError::Unknown { id })?;
        let (index, _) = split(id);
        let value = self.slots[index]
            .value
            .take()
            .ok_or(IdTableError::Unknown { id })?;
        self.free.push(index as u32);
        Ok(value)
    }

    /// Gives an outstanding request a new id (same slot, next generation),
    /// so that answers to the old id are refused from now on.
    pub fn renew(&mut self, id: u64) -> Result<u64, IdTableError> {
        self.slot(id).ok_or(IdTableError::Unknown { id })?;
        let (index, _) = split(id);
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1);
        Ok(join(index, slot.generation))
    }

    /// The outstanding ids, in slot order.
    pub fn ids(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| join(i, s.generation))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_idtable_insert_until_full_then_refuses() {
        let mut t = IdTable::new(3);
        let ids: Vec<u64> = (0..3).map(|v| t.insert(v).expect("room")).collect();
        assert_eq!(t.insert(9), Err(9));
        assert_eq!(t.len(), 3);
        let mut idx: Vec<usize> = ids.iter().map(|&i| split(i).0).collect();
        idx.sort_unstable();
        assert_eq!(idx, [0, 1, 2]);
    }

    #[test]
    fn test_idtable_remove_twice_is_unknown() {
        let mut t = IdTable::new(2);
        let id = t.insert("a").expect("room");
        assert_eq!(t.remove(id), Ok("a"));
        assert_eq!(t.remove(id), Err(IdTableError::Unknown { id }));
        assert!(t.is_empty());
    }

    #[test]
    fn test_idtable_stale_id_of_reused_slot_is_unknown() {
        // Arrange
        let mut t = IdTable::new(1);
        let old = t.insert(1).expect("room");
        t.remove(old).expect("outstanding");

        // Act
        let new = t.insert(2).expect("room");

        // Assert
        assert_eq!(split(old).0, split(new).0);
        assert_ne!(old, new);
        assert_eq!(t.remove(old), Err(IdTableError::Unknown { id: old }));
        assert_eq!(t.get(new), Some(&2));
    }

    #[test]
    fn test_idtable_out_of_range_and_free_ids_are_unknown() {
        let mut t: IdTable<u8> = IdTable::new(4);
        for id in [0u64, 1, 4, u64::MAX, 1 << 32, (1 << 32) | 7] {
            assert_eq!(t.remove(id), Err(IdTableError::Unknown { id }));
            assert!(t.get(id).is_none());
        }
    }

    #[test]
    fn test_idtable_renew_refuses_old_id_keeps_value() {
        let mut t = IdTable::new(2);
        let old = t.insert('x').expect("room");
        let new = t.renew(old).expect("outstanding");
        assert!(t.get(old).is_none());
        assert_eq!(t.remove(old), Err(IdTableError::Unknown { id: old }));
        assert_eq!(t.ids(), [new]);
        assert_eq!(t.remove(new), Ok('x'));
    }
}
