//! Decision reasons: readable strings collected only when the caller asks for them.

/// A sink for reasons; formatting work is skipped entirely when disabled.
#[derive(Debug, Default, Clone)]
pub struct Reasons {
    enabled: bool,
    list: Vec<String>,
}

impl Reasons {
    /// A sink that keeps reasons when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            list: Vec::new(),
        }
    }

    /// Adds a reason, built only when reasons are being collected.
    pub fn add(&mut self, reason: impl FnOnce() -> String) {
        if self.enabled {
            self.list.push(reason());
        }
    }

    /// Takes the collected reasons, leaving the sink empty.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.list)
    }
}
