//! The gateway alone against the real NATS and Redis: authentication,
//! frames, deliveries, limits, presence, draining (what needs auth or the
//! message service too is in natter-server's tests).

mod deliveries;
mod frames;
mod lifecycle;
mod limits;
mod revocations;
mod support;
