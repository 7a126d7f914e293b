//! [`Swappable`]: a value a reload replaces as a whole (the policy, the
//! proxy TLS settings) while connections keep the one they started with.
use std::sync::{Arc, RwLock};

/// A value replaced as a whole while readers hold on to the one they took.
/// Clones share the same slot.
pub struct Swappable<T>(Arc<RwLock<Arc<T>>>);

impl<T> Swappable<T> {
    pub fn new(value: impl Into<Arc<T>>) -> Self {
        Self(Arc::new(RwLock::new(value.into())))
    }
    /// The value in force now; later swaps do not change it.
    pub fn load(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn store(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

impl<T> Clone for Swappable<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}
