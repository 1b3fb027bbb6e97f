//! The control loops that drive actual state to desired state, below the API and
//! above the store: the operation worker, the reconciler, the warm keeper, the
//! retention collector, the health prober, the heartbeat writer and the routing
//! publisher, with the node configuration they hand out. Nothing here imports the
//! API.

pub mod every;
pub mod health;
pub mod heartbeats;
pub mod leader;
pub mod metrics;
pub mod node_config;
pub mod partition;
pub mod reconciler;
pub mod retention;
pub mod routing;
pub mod signing;
pub mod warm;
pub mod worker;

pub use metrics::ControlMetrics;
