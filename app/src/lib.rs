//! The monolith's composition root: the list of modules this binary carries. Which of
//! them run in a given process is configuration (`modules.enabled`).

use std::sync::Arc;

use module_api::Module;

/// Every module compiled into the monolith.
pub fn modules() -> Vec<Arc<dyn Module>> {
    vec![
        // xtask:modules:begin (cargo xtask extract/inline edit these lines)
        Arc::new(catalog::Catalog),
        Arc::new(checkout::Checkout),
        Arc::new(fulfillment::Fulfillment),
        // xtask:modules:end
    ]
}
