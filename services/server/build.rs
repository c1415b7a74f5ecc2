//! Records the git commit `natter-server` is built from as `NATTER_COMMIT`
//! (crates/commit.rs, shared by the server's and the client's builds).

#[path = "../../crates/commit.rs"]
mod commit;

fn main() {
    commit::record();
}
