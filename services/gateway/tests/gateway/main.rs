//! The gateway against the real stack: authentication, frames, limits,
//! revocation, draining.

mod frames;
mod lifecycle;
