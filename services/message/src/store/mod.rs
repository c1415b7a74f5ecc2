//! The message service's SQL, by aggregate. Lock order everywhere:
//! channels ascending, then users ascending, each with an explicit
//! `SELECT … ORDER BY id FOR NO KEY UPDATE`.

pub(crate) mod outbox;
pub(crate) mod users;
