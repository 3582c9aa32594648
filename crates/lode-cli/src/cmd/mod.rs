//! One module per subcommand.

pub mod agent;
pub mod cache;
pub mod cache_node;
pub mod cat;
pub mod common;
pub mod credentials;
pub mod flatten;
pub mod fleet;
pub mod frontend;
pub mod gc;
pub mod images;
pub mod inspect;
pub mod manager;
pub mod pull;
pub mod push;
pub mod rm;
pub mod root;
pub mod run;
pub mod serve;
pub mod vm;
pub mod volumes;
pub mod worker;
