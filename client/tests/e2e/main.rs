//! The client against the real stack (test kit): two or three users
//! driving [`Session`]s as people would, the real binary in script mode,
//! and the real binary in tmux.

mod binary;
mod chat;
mod daylong;
mod reconnect;
mod support;
mod tls;
mod tmux;
