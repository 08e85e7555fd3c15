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

    /// Whether reasons are being collected.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Adds reasons collected elsewhere (copied only when reasons are being collected).
    pub fn extend(&mut self, reasons: &[String]) {
        if self.enabled {
            self.list.extend_from_slice(reasons);
        }
    }

    /// Takes the collected reasons, leaving the sink empty.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.list)
    }
}
